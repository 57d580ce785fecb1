"""Id vocabularies: raw id → dense index with padding 0 and an OOV bucket 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PAD = 0
OOV = 1
RESERVED = 2


def _is_int(values: np.ndarray) -> bool:
    return values.dtype.kind in "iu"


@dataclass(frozen=True)
class Vocab:
    """Known raw ids in first-seen-sorted order; index ``RESERVED + position``.

    Ids are kept in their raw type (int64 or str); lookups with the other type compare the canonical
    string spelling, so ``42`` and ``"42"`` are the same id.
    """

    keys: np.ndarray

    @classmethod
    def build(cls, values: Any) -> Vocab:
        arr = np.asarray(values)
        if not _is_int(arr):
            arr = arr.astype(str)
        return cls(keys=np.unique(arr))

    def __len__(self) -> int:
        """Table size including padding and OOV rows."""
        return len(self.keys) + RESERVED

    def lookup(self, values: Any) -> np.ndarray:
        """Indices (int64) for ``values``; unseen ids → :data:`OOV`."""
        arr = np.asarray(values)
        keys = self.keys
        if _is_int(arr) != _is_int(keys):
            arr, keys = arr.astype(str), keys.astype(str)
        idx = pd.Index(keys).get_indexer(arr)
        return np.where(idx < 0, OOV, idx + RESERVED).astype(np.int64)

    def strings(self) -> np.ndarray:
        """Canonical string spelling of the known ids, in index order (for bundles and the wire)."""
        return self.keys.astype(np.int64).astype(str) if _is_int(self.keys) else self.keys.astype(str)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "int" if _is_int(self.keys) else "str", "keys": self.keys.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocab:
        dtype = np.int64 if data["kind"] == "int" else str
        return cls(keys=np.asarray(data["keys"], dtype=dtype))
