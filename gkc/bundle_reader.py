"""Answer ``batch_get`` from a local bundle in memory: the trainer's offline path.

Same contract and same bytes as :class:`gkc.client.GkcClient` (same dedupe order, zeros and found-mask
for missing rows, the stored rows of the bundle's dtype turned into float32 by the same
:func:`contract.quantize.dequantize`), so a model trained from a bundle sees exactly what it later gets
from GKC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from contract import quantize as quant
from gkc.bundle import Bundle, load
from gkc.lookup import Lookup, dedupe
from services.errors import InvalidArgument, NotFound


class BundleReader:
    def __init__(self, bundle: Bundle, version: int = 0) -> None:
        if bundle.manifest.base is not None:  # alone it lacks every entry its base holds
            raise InvalidArgument(
                f"this bundle is a delta over {bundle.manifest.base}: it holds only entries that changed; "
                "read it through GKC, or fold it into its base (gkc.delta.fold) first"
            )
        self.bundle = bundle
        #: The GKC version this bundle was published as, if known (0 = unknown / local).
        self.version = version
        self.manifest = bundle.manifest
        #: The content checksum every answer carries (what a model trained from this bundle pins).
        self.checksum = bundle.manifest.content_checksum()
        #: Stored rows per block (views for float dtypes), dequantized per answer as GKC does.
        self._rows = {block: bundle.rows(block) for block in ("users", "items", "ucs")}
        self._users = {u: i for i, u in enumerate(bundle.user_ids.tolist())}
        self._items = {u: i for i, u in enumerate(bundle.item_ids.tolist())}
        self._ucs = {
            (u, c): i
            for i, (u, c) in enumerate(
                zip(bundle.uc_user_ids.tolist(), bundle.uc_category_ids.tolist(), strict=True)
            )
        }

    @classmethod
    def open(cls, path: str | os.PathLike[str], version: int = 0) -> BundleReader:
        return cls(load(path), version)

    def batch_get(
        self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str], version: int = 0
    ) -> Lookup:
        if version and self.version and version != self.version:
            raise NotFound(f"this bundle is version {self.version}, not {version}")
        if len(item_ids) != len(category_ids):
            raise InvalidArgument("item_ids and category_ids must be parallel")
        dims, dtype = self.manifest.dims, self.manifest.dtype
        items, item_index = dedupe(item_ids)
        cats, uc_index = dedupe(category_ids)
        urow = self._users.get(user_id)
        item_rows = [self._items.get(i) for i in items]
        uc_rows = [self._ucs.get((user_id, c)) for c in cats]
        return Lookup(
            version=version or self.version,
            user=_gather(self._rows["users"], [urow], dtype, dims.user)[0],
            user_found=urow is not None,
            items=_gather(self._rows["items"], item_rows, dtype, dims.item),
            item_found=np.array([r is not None for r in item_rows], dtype=bool),
            item_index=item_index,
            ucs=_gather(self._rows["ucs"], uc_rows, dtype, dims.uc),
            uc_found=np.array([r is not None for r in uc_rows], dtype=bool),
            uc_index=uc_index,
            checksum=self.checksum,
        )


def _gather(stored: np.ndarray, rows: list[int | None], dtype: str, dim: int) -> np.ndarray:
    """float32 ``[len(rows), dim]``: the stored rows dequantized, zeros where ``None``."""
    out = np.zeros((len(rows), dim), dtype=np.float32)
    found = [(pos, r) for pos, r in enumerate(rows) if r is not None]
    if found:
        pos, idx = zip(*found, strict=True)
        out[list(pos)] = quant.dequantize(stored[list(idx)], dtype, dim)
    return out
