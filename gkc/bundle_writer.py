"""Streaming bundle writes (:class:`BundleWriter`): export appends each batch's vectors to the bundle's
``.npy`` files, so no block is ever held in memory whole. The format, validation and sealing (checksums,
manifest, atomic rename) are :mod:`gkc.bundle`'s; this module only adds the incremental path, and
:func:`convert` (a float32 bundle re-stored at another dtype, batch by batch).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract import quantize as quant
from contract.ids import canonical_ids
from contract.knowledge import Dims
from gkc.bundle import (
    Bundle,
    BundleError,
    Counts,
    Manifest,
    all_finite,
    check_scales,
    seal,
    tmp_dir,
    validate_ids,
)
from gkc.store import VersionIdentity
from services.errors import InvalidArgument

VECTOR_FILES = {"users": "user_vectors.npy", "items": "item_vectors.npy", "uc": "uc_vectors.npy"}
SCALE_FILES = {"users": "user_scales.npy", "items": "item_scales.npy", "uc": "uc_scales.npy"}


class BundleWriter:
    """A bundle written batch by batch: :meth:`append` streams each block's vectors (float32, stored
    at ``dtype``: quantized row by row) straight into its ``.npy`` file (header first, rows in order),
    so no block, K̂_uc included, is ever held in memory. :meth:`finish` writes the ids, checks counts
    and ids, checksums and renames as :func:`save` does; :meth:`abort` removes the leftovers."""

    def __init__(
        self, out: str | os.PathLike[str], counts: Counts, dims: Dims, dtype: str = quant.FLOAT32
    ) -> None:
        self.target = Path(out)
        if self.target.exists():
            raise BundleError(f"{self.target} already exists; refusing to overwrite a bundle")
        self.counts, self.dims, self.dtype = counts, dims, quant.check_dtype(dtype)
        self.shapes = {
            "users": (counts.users, dims.user),
            "items": (counts.items, dims.item),
            "uc": (counts.user_categories, dims.uc),
        }
        self.rows = dict.fromkeys(self.shapes, 0)
        self.tmp = tmp_dir(self.target)
        self._files = {}
        self._scales = {}
        for block, shape in self.shapes.items():
            self._files[block] = _open_npy(self.tmp / VECTOR_FILES[block], quant.STORAGE[dtype], shape)
            if dtype == quant.INT8:
                self._scales[block] = _open_npy(self.tmp / SCALE_FILES[block], quant.SCALE_DTYPE, shape[:1])

    def append(self, block: str, vectors: np.ndarray) -> None:
        """The next rows of ``block`` (``users``, ``items`` or ``uc``), in order."""
        n, dim = self.shapes[block]
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != dim or self.rows[block] + len(arr) > n:
            raise BundleError(f"{block}: {arr.shape} rows after {self.rows[block]} do not fit ({n}, {dim})")
        if not all_finite(arr):
            raise BundleError(f"{block} vectors contain NaN or inf")
        try:
            values, scales = quant.quantize(arr, self.dtype)
        except InvalidArgument as err:
            raise BundleError(f"{block}: {err}") from err
        self._files[block].write(values.tobytes())
        if scales is not None:
            self._scales[block].write(scales.tobytes())
        self.rows[block] += len(arr)

    def append_stored(self, block: str, values: np.ndarray, scales: np.ndarray | None = None) -> None:
        """The next rows of ``block`` already stored at the writer's dtype (``scales`` for int8), written
        as they are: a delta copies a bundle's stored rows, and quantizing them again could change
        them."""
        n, dim = self.shapes[block]
        values = np.ascontiguousarray(values)
        if values.dtype != quant.STORAGE[self.dtype] or values.ndim != 2 or values.shape[1] != dim:
            raise BundleError(f"{block}: rows {values.dtype} {values.shape}, not {self.dtype} (*, {dim})")
        if self.rows[block] + len(values) > n:
            raise BundleError(f"{block}: {len(values)} rows after {self.rows[block]} do not fit {n}")
        if (scales is None) != (self.dtype != quant.INT8):
            raise BundleError(f"{block}: int8 rows need their scales, other dtypes have none")
        if scales is None and not all_finite(values):
            raise BundleError(f"{block} vectors contain NaN or inf")
        if scales is not None:
            scales = np.ascontiguousarray(scales, dtype=quant.SCALE_DTYPE)
            if scales.shape != (len(values),):
                raise BundleError(f"{block}: {scales.shape} scales for {len(values)} rows")
            check_scales(block, scales)
            if bool((values == -128).any()):
                raise BundleError(f"{block} int8 codes outside ±{quant.INT8_MAX}")
        self._files[block].write(values.tobytes())
        if scales is not None:
            self._scales[block].write(scales.tobytes())
        self.rows[block] += len(values)

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
        created: float | None = None,
        base: VersionIdentity | None = None,
    ) -> Path:
        """Seal the bundle (``base``: a delta's base version, :mod:`gkc.delta`)."""
        self._close()
        short = {b: (r, self.shapes[b][0]) for b, r in self.rows.items() if r != self.shapes[b][0]}
        if short:
            raise BundleError(f"blocks not complete (written, expected): {short}")
        manifest = Manifest(
            dims=self.dims,
            counts=self.counts,
            dtype=self.dtype,
            interaction=self.dims.user == self.dims.item,
            strategy=strategy,
            source=dict(source or {}),
            metrics=dict(metrics or {}),
            created=time.time() if created is None else created,
            base=base,
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
        for fh in [*self._files.values(), *self._scales.values()]:
            fh.close()


def _open_npy(path: Path, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
    fh = path.open("wb")
    np.lib.format.write_array_header_1_0(fh, {"descr": dtype.str, "fortran_order": False, "shape": shape})
    return fh


def convert(bundle: Bundle, dtype: str, out: str | os.PathLike[str], batch: int = 65_536) -> Path:
    """Write ``bundle`` (float32) stored at ``dtype`` to ``out``, batch by batch (same bytes as an export
    at that dtype: quantizing is row by row). Only float32 bundles are converted: re-quantizing stored
    knowledge would compound its error."""
    m = bundle.manifest
    quant.check_dtype(dtype)
    if m.dtype != quant.FLOAT32:
        raise BundleError(f"only a float32 bundle can be stored at another dtype; this one is {m.dtype}")
    if m.base is not None:  # its rows were chosen against its base's stored bytes, at its base's dtype
        raise BundleError(
            f"a delta bundle (over {m.base}) is stored at its base's dtype; export it with --dtype instead"
        )
    writer = BundleWriter(out, m.counts, m.dims, dtype)
    try:
        for block, vectors in (
            ("users", bundle.user_vectors),
            ("items", bundle.item_vectors),
            ("uc", bundle.uc_vectors),
        ):
            for start in range(0, len(vectors), batch):
                writer.append(block, vectors[start : start + batch])
        return writer.finish(
            user_ids=bundle.user_ids,
            item_ids=bundle.item_ids,
            uc_user_ids=bundle.uc_user_ids,
            uc_category_ids=bundle.uc_category_ids,
            strategy=m.strategy,
            source=m.source,
            metrics=m.metrics,
            created=m.created,
        )
    except BaseException:
        writer.abort()
        raise
