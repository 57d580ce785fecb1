"""Raw ids and vocabularies: the one id → row contract of training, export and serving.

Raw ids are int64 or strings. Their *canonical spelling* (:func:`canonical_ids`) is the decimal string of
an int id or the string itself, so ``42`` and ``"42"`` are the same id: GKC keys, bundles and the wire
use it, and a :class:`Vocab` built from ints answers string lookups (and the reverse) through it.

A :class:`Vocab` numbers the known ids of a log: row ``RESERVED + position`` of ``keys``, with
:data:`PAD` (0) for padding and :data:`OOV` (1) for every unknown id. A fresh vocabulary's keys are
sorted; a continuation *grows* it (:meth:`Vocab.extended`): the new ids are appended, so every old id
keeps its row and the tables grow by rows at the end. Vocabularies are saved as one ``.npy`` array of
keys per table (:meth:`Vocabs.save`, memory-mapped on load); the older JSON form still loads.

Training encodes whole columns with :meth:`Vocab.lookup` (vectorised, a pandas hash index); serving
encodes a handful of ids per request with an :class:`IdEncoder` (:meth:`Vocab.encoder`: a dict keyed
by canonical spelling, built once per model load; a dict lookup per id is far cheaper than a vectorised
lookup's per-call conversion and sort when the request's string ids meet an int vocabulary). Both give
the same rows (tested).

Numpy at import (``gkc`` and the ranker image, which has no pandas, import this module); only
:meth:`Vocab.lookup` needs pandas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.errors import InvalidArgument

PAD = 0
OOV = 1
RESERVED = 2


def _is_int(values: np.ndarray) -> bool:
    return values.dtype.kind in "iu"


def sorted_unique(values: Any) -> np.ndarray:
    """``np.unique(values)``: sorted, distinct. Int ids by one sort and a neighbour compare, ~10x faster
    than numpy 2.4's hashing ``np.unique`` on millions of ids (2.8 s vs 0.24 s for 3.7M)."""
    arr = np.asarray(values)
    if not _is_int(arr) or arr.ndim != 1 or arr.size == 0:
        return np.unique(arr)
    ordered = np.sort(arr)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def canonical_ids(values: Any) -> np.ndarray:
    """Raw ids (ints or strings) as a unicode array, the one spelling used for keys and the wire."""
    arr = np.asarray(values)
    if arr.size == 0:  # ``[]`` arrives as float64; an empty block is legal, and as narrow as can be
        return np.zeros(0, dtype="<U1")  # (``astype(str)``: <U32, widening whatever it is joined to)
    if _is_int(arr):  # as narrow as the longest id (``astype(str)`` would give <U21)
        ints = arr.astype(np.int64)
        width = max(len(str(int(ints.min()))), len(str(int(ints.max()))))
        return ints.astype(f"<U{width}")
    if arr.dtype.kind == "f":
        raise InvalidArgument("ids must be integers or strings, not floats")
    return arr.astype(str)


@dataclass(frozen=True)
class IdEncoder:
    """Canonical id → row, as a dict: the per-request encode path of serving."""

    index: dict[str, int]

    def encode(self, ids: Sequence[str], *, empty_is_pad: bool = False) -> np.ndarray:
        """Rows (int64) of ``ids`` in canonical spelling; unknown → :data:`OOV`, ``""`` → PAD if asked."""
        get = self.index.get
        if empty_is_pad:
            return np.fromiter((get(i, OOV) if i else PAD for i in ids), np.int64, len(ids))
        # map() calls dict.get from C: ~1.3x faster than a generator expression on 500 fresh ids
        return np.fromiter(map(get, ids, repeat(OOV)), np.int64, len(ids))

    def known(self, limit: int) -> list[str]:
        """Up to ``limit`` known ids (for warm-up requests)."""
        return [key for key, _ in zip(self.index, range(limit), strict=False)]


@dataclass(frozen=True)
class Vocab:
    """Known raw ids, unique, in row order: id ``keys[k]`` is row ``2 + k``. Sorted when built from a
    log (as ``np.unique`` makes them); a grown vocabulary appends its new ids (:meth:`extended`)."""

    keys: np.ndarray
    _indexes: dict[bool, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, values: Any) -> Vocab:
        arr = np.asarray(values)
        if not _is_int(arr):
            arr = arr.astype(str)
        return cls(keys=sorted_unique(arr))

    def __len__(self) -> int:
        """Table size including the padding and OOV rows."""
        return len(self.keys) + RESERVED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.keys.dtype.kind == other.keys.dtype.kind and np.array_equal(self.keys, other.keys)

    def strings(self) -> np.ndarray:
        """Canonical spelling of the known ids, in row order (for bundles and the wire)."""
        return canonical_ids(self.keys) if len(self.keys) else np.zeros(0, dtype="<U1")

    def _index(self, as_strings: bool) -> Any:
        """A hash index of the keys (or of their canonical spellings), built once per vocabulary."""
        import pandas as pd  # training side only: serving encodes through encoder(), without pandas

        if as_strings not in self._indexes:
            keys = self.keys.astype(str) if as_strings else self.keys
            self._indexes[as_strings] = pd.Index(keys)
        return self._indexes[as_strings]

    def lookup(self, values: Any) -> np.ndarray:
        """Rows (int64) of ``values`` (a column of raw ids); unseen ids → :data:`OOV`."""
        arr = np.asarray(values)
        mixed = _is_int(arr) != _is_int(self.keys)
        if mixed:
            arr = arr.astype(str)
        idx = self._index(mixed).get_indexer(arr)
        return np.where(idx < 0, OOV, idx + RESERVED).astype(np.int64)

    def encoder(self) -> IdEncoder:
        """The dict-based encoder of serving (same rows as :meth:`lookup`)."""
        return IdEncoder({key: RESERVED + pos for pos, key in enumerate(self.strings().tolist())})

    def extended(self, values: Any) -> Vocab:
        """This vocabulary plus the ids of ``values`` it does not know, appended (sorted) after the old
        ones: every old id keeps its row. Int and string keys meet in canonical spelling."""
        new = np.asarray(values)
        if len(new) == 0:
            return self
        keys = self.keys
        if len(keys) and _is_int(new) != _is_int(keys):
            keys, new = self.strings(), canonical_ids(new)
        fresh = sorted_unique(new if _is_int(new) else new.astype(str))
        if len(keys):
            fresh = fresh[~np.isin(fresh, keys)]
        if len(fresh) == 0 and keys is self.keys:
            return self
        return Vocab(keys=np.concatenate([keys, fresh]) if len(keys) else fresh)

    def save(self, path: str | os.PathLike[str]) -> None:
        """The keys as one ``.npy`` array (int64 or fixed-width unicode), in row order."""
        keys = self.keys.astype(np.int64) if _is_int(self.keys) else self.keys.astype(str)
        np.save(Path(path), keys, allow_pickle=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = True) -> Vocab:
        """A vocabulary saved by :meth:`save`; ``mmap``: the keys stay on disk until touched."""
        keys = np.load(Path(path), mmap_mode="r" if mmap else None, allow_pickle=False)
        if not (_is_int(keys) or keys.dtype.kind == "U"):
            raise InvalidArgument(f"{path}: vocabulary keys must be int64 or strings, not {keys.dtype}")
        return cls(keys=keys)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "int" if _is_int(self.keys) else "str", "keys": self.keys.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocab:
        dtype = np.int64 if data["kind"] == "int" else str
        return cls(keys=np.asarray(data["keys"], dtype=dtype))


class LogColumns(Protocol):
    """What :meth:`Vocabs.build` reads from a log (a pandas DataFrame is one)."""

    @property
    def columns(self) -> Any: ...

    def __getitem__(self, key: str) -> Any: ...


#: Id column of each vocabulary.
VOCAB_COLUMNS = {"user": "user_id", "item": "item_id", "category": "category_id", "shop": "shop_id"}


@dataclass(frozen=True)
class Vocabs:
    """The vocabularies of a model: user, item, category and (when the log has shops) shop."""

    user: Vocab
    item: Vocab
    category: Vocab
    shop: Vocab | None

    @classmethod
    def build(cls, log: LogColumns, init: Vocabs | None = None) -> Vocabs:
        """Vocabularies of ``log``'s ids; with ``init``, ``init``'s ids (same rows) plus the new ones."""

        def vocab(name: str) -> Vocab | None:
            column = VOCAB_COLUMNS[name]
            old: Vocab | None = getattr(init, name) if init is not None else None
            if column not in log.columns:
                return old
            values = log[column].to_numpy()
            return Vocab.build(values) if old is None else old.extended(values)

        user, item, category = vocab("user"), vocab("item"), vocab("category")
        assert user is not None and item is not None and category is not None  # required columns
        return cls(user=user, item=item, category=category, shop=vocab("shop"))

    def n_shops(self) -> int:
        """Rows of the shop table (padding and OOV only when the log has no shops)."""
        return len(self.shop) if self.shop is not None else RESERVED

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """``directory/{user,item,category[,shop]}.npy`` (written under a temporary name, then renamed)."""
        root = Path(directory)
        tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in VOCAB_COLUMNS:
            table = getattr(self, name)
            if table is not None:
                table.save(tmp / f"{name}.npy")
        if root.exists():
            import shutil

            shutil.rmtree(root)
        os.replace(tmp, root)
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> Vocabs:
        """Vocabularies saved by :meth:`save` (memory-mapped by default)."""
        root = Path(directory)
        missing = [n for n in ("user", "item", "category") if not (root / f"{n}.npy").is_file()]
        if missing:
            raise InvalidArgument(
                f"{root}: missing vocabulary file(s) {', '.join(f'{n}.npy' for n in missing)}"
            )
        tables = {n: Vocab.load(root / f"{n}.npy", mmap=mmap) for n in ("user", "item", "category")}
        shop = root / "shop.npy"
        return cls(**tables, shop=Vocab.load(shop, mmap=mmap) if shop.is_file() else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k).to_json() for k in ("user", "item", "category")}
        out["shop"] = self.shop.to_json() if self.shop is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabs:
        return cls(
            user=Vocab.from_json(data["user"]),
            item=Vocab.from_json(data["item"]),
            category=Vocab.from_json(data["category"]),
            shop=Vocab.from_json(data["shop"]) if data.get("shop") else None,
        )
