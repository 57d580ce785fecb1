"""Streaming bundle writes (:class:`BundleWriter`): export appends each batch's vectors to the bundle's
``.npy`` files, so no block is ever held in memory whole. The format, validation and sealing (checksums,
manifest, atomic rename) are :mod:`gkc.bundle`'s; this module only adds the incremental path.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from contract.knowledge import Dims
from gkc.bundle import (
    FLOAT_DTYPE,
    BundleError,
    Counts,
    Manifest,
    all_finite,
    seal,
    tmp_dir,
    validate_ids,
)

VECTOR_FILES = {"users": "user_vectors.npy", "items": "item_vectors.npy", "uc": "uc_vectors.npy"}


class BundleWriter:
    """A bundle written batch by batch: :meth:`append` streams each block's vectors straight into its
    ``.npy`` file (header first, rows in order), so no block, K̂_uc included, is ever held in memory.
    :meth:`finish` writes the ids, checks counts and ids, checksums and renames as :func:`save` does;
    :meth:`abort` removes the leftovers."""

    def __init__(self, out: str | os.PathLike[str], counts: Counts, dims: Dims) -> None:
        self.target = Path(out)
        if self.target.exists():
            raise BundleError(f"{self.target} already exists; refusing to overwrite a bundle")
        self.counts, self.dims = counts, dims
        self.shapes = {
            "users": (counts.users, dims.user),
            "items": (counts.items, dims.item),
            "uc": (counts.user_categories, dims.uc),
        }
        self.rows = dict.fromkeys(self.shapes, 0)
        self.tmp = tmp_dir(self.target)
        self._files = {}
        for block, shape in self.shapes.items():
            fh = (self.tmp / VECTOR_FILES[block]).open("wb")
            header = {"descr": FLOAT_DTYPE.str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(fh, header)
            self._files[block] = fh

    def append(self, block: str, vectors: np.ndarray) -> None:
        """The next rows of ``block`` (``users``, ``items`` or ``uc``), in order."""
        n, dim = self.shapes[block]
        arr = np.ascontiguousarray(vectors, dtype=FLOAT_DTYPE)
        if arr.ndim != 2 or arr.shape[1] != dim or self.rows[block] + len(arr) > n:
            raise BundleError(f"{block}: {arr.shape} rows after {self.rows[block]} do not fit ({n}, {dim})")
        if not all_finite(arr):
            raise BundleError(f"{block} vectors contain NaN or inf")
        self._files[block].write(arr.tobytes())
        self.rows[block] += len(arr)

    def finish(
        self,
        *,
        user_ids: Any,
        item_ids: Any,
        uc_user_ids: Any,
        uc_category_ids: Any,
        strategy: str = "serving",
        source: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Path:
        self._close()
        short = {b: (r, self.shapes[b][0]) for b, r in self.rows.items() if r != self.shapes[b][0]}
        if short:
            raise BundleError(f"blocks not complete (written, expected): {short}")
        manifest = Manifest(
            dims=self.dims,
            counts=self.counts,
            interaction=self.dims.user == self.dims.item,
            strategy=strategy,
            source=dict(source or {}),
            metrics=dict(metrics or {}),
            created=time.time(),
        )
        ids = {
            "user_ids": canonical_ids(user_ids),
            "item_ids": canonical_ids(item_ids),
            "uc_user_ids": canonical_ids(uc_user_ids),
            "uc_category_ids": canonical_ids(uc_category_ids),
        }
        validate_ids(manifest, **ids)
        for name, arr in ids.items():
            np.save(self.tmp / f"{name}.npy", arr, allow_pickle=False)
        return seal(self.tmp, self.target, manifest)

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close(self) -> None:
        for fh in self._files.values():
            fh.close()
