"""The GKC's in-process item cache: an LRU of K̂_i rows across versions, bounded in bytes.

Rows are cached per version *namespace* (unique per published identity, see :mod:`gkc.store`): versions
are immutable, so a row never goes stale while its identity lives; :meth:`ItemCache.drop` removes the
rows of a version that left the registry (retired, damaged, or lost with Redis' data). Each namespace
has a slab: one ``uint8``
matrix of rows (``4 × dim`` bytes each), a found flag per row (a cached "known missing" is a zero row
with found = 0, so a miss is not fetched again), a last-use stamp per row and a ``dict`` id → row.
A read is one C-level ``map(dict.get, ids)`` (the ids' hashes are already computed by the dedupe)
plus numpy: the answer's rows are gathered with one fancy index and the hits are stamped with one
vectorised store; no per-id Python code, no per-entry objects (an ``OrderedDict`` with a
``move_to_end`` per hit cost about 2x more per request here; a plain dict of ``bytes`` could only be
FIFO). Every row is charged its bytes (the row plus its id string plus the index entry), so ids of any
length cannot make the cache outgrow ``capacity_bytes``. Eviction is LRU over all versions together:
when the cache holds more than ``capacity_bytes``, the rows with the oldest stamps go until it holds at
most ``15/16`` of it, so that the scan is paid once per many inserts.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat

import numpy as np

#: What one cached row costs beside its bytes and its id string: the dict entry, the key list slot, the
#: found / stamp / live / cost cells (measured with tracemalloc: ~90-110 bytes).
ROW_OVERHEAD = 112


def row_cost(width: int, key: str) -> int:
    return width + sys.getsizeof(key) + ROW_OVERHEAD


@dataclass
class CachedRows:
    """One lookup: ``rows`` [n, width] uint8 (zeros where not found or not cached), ``found`` [n] bool,
    ``todo`` = positions that were not cached (the caller fetches them, then calls ``put_many``)."""

    rows: np.ndarray
    found: np.ndarray
    todo: list[int]


class _Slab:
    """The rows of one version."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.index: dict[str, int] = {}
        self.keys: list[str | None] = []  # row -> id (None = free)
        self.free: list[int] = []
        self.rows = np.zeros((0, width), np.uint8)
        self.found = np.zeros(0, bool)
        self.stamps = np.zeros(0, np.int64)
        self.live = np.zeros(0, bool)
        self.cost = np.zeros(0, np.int64)

    def alloc(self, n: int, limit: int) -> np.ndarray:
        reuse = [self.free.pop() for _ in range(min(n, len(self.free)))]
        grow = n - len(reuse)
        top = len(self.keys)
        if top + grow > len(self.rows):
            size = max(top + grow, min(2 * len(self.rows), limit), 1024)
            self.rows = _resized(self.rows, size)
            self.found = _resized(self.found, size)
            self.stamps = _resized(self.stamps, size)
            self.live = _resized(self.live, size)
            self.cost = _resized(self.cost, size)
        self.keys.extend([None] * grow)
        return np.array(reuse + list(range(top, top + grow)), dtype=np.intp)


def _resized(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *arr.shape[1:]), arr.dtype)
    out[: len(arr)] = arr
    return out


class ItemCache:
    """Thread-safe (one lock around each call). See the module docstring for the layout and policy."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._slabs: dict[str, _Slab] = {}
        self._size = 0
        self.bytes = 0
        self._tick = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    def get_many(self, version: str, ids: Sequence[str], width: int) -> CachedRows:
        n = len(ids)
        with self._lock:
            slab = self._slabs.get(version)
            if slab is None or not slab.index:
                rows, found, todo = np.zeros((n, width), np.uint8), np.zeros(n, bool), list(range(n))
            else:
                if slab.width != width:
                    raise ValueError(f"version {version} rows are {slab.width} bytes, not {width}")
                self._tick += 1
                slots = np.fromiter(map(slab.index.get, ids, repeat(-1)), np.intp, n)
                miss = slots < 0
                todo = np.flatnonzero(miss).tolist()
                if todo:
                    slots[miss] = 0
                    rows, found = slab.rows[slots], slab.found[slots]
                    rows[miss] = 0
                    found[miss] = False
                    slab.stamps[slots[~miss]] = self._tick
                else:
                    rows, found = slab.rows[slots], slab.found[slots]
                    slab.stamps[slots] = self._tick
        self.hits += n - len(todo)
        self.misses += len(todo)
        return CachedRows(rows, found, todo)

    def put_many(self, version: str, ids: Sequence[str], values: Sequence[bytes | None], width: int) -> None:
        """Cache fetched rows; ``None`` = known missing. Every present value must be ``width`` bytes."""
        if self.capacity <= 0 or not ids:
            return
        with self._lock:
            slab = self._slabs.get(version)
            if slab is None:
                slab = self._slabs[version] = _Slab(width)
            new = [(key, value) for key, value in zip(ids, values, strict=True) if key not in slab.index]
            if not new:
                return
            slots = slab.alloc(len(new), max(1024, self.capacity // max(1, width)))
            present = [value is not None for _, value in new]
            costs = [row_cost(width, key) for key, _ in new]
            for slot, (key, _) in zip(slots.tolist(), new, strict=True):
                slab.index[key] = slot
                slab.keys[slot] = key
            slab.cost[slots] = costs
            slab.rows[slots] = 0
            if any(present):
                data = b"".join(compress([value for _, value in new], present))  # type: ignore[misc]
                slab.rows[slots[present]] = np.frombuffer(data, np.uint8).reshape(-1, width)
            slab.found[slots] = present
            self._tick += 1
            slab.stamps[slots] = self._tick
            slab.live[slots] = True
            self._size += len(new)
            self.bytes += sum(costs)
            while self.bytes > self.capacity and self._size:
                # drop the excess (plus 1/16 of the capacity, when that is at least a row, so that the
                # scan is paid once per many inserts) in rows of the mean cost; loop if that was short
                mean = self.bytes / self._size
                slack = self.capacity // 16 if self.capacity // 16 >= mean else 0
                self._evict(min(self._size, math.ceil((self.bytes - self.capacity + slack) / mean)))

    def _evict(self, n: int) -> None:
        """Remove the ``n`` rows with the oldest stamps, all versions together (lock held)."""
        slabs = list(self._slabs.items())
        live = [np.flatnonzero(slab.live) for _, slab in slabs]
        stamps = np.concatenate([slab.stamps[rows] for (_, slab), rows in zip(slabs, live, strict=True)])
        cutoff = int(np.partition(stamps, n - 1)[n - 1])  # the n-th oldest stamp
        ties = n - int((stamps < cutoff).sum())  # rows stamped == cutoff that must go too
        for (version, slab), rows in zip(slabs, live, strict=True):
            s = slab.stamps[rows]
            tied = rows[s == cutoff][: max(ties, 0)]
            ties -= len(tied)
            gone = np.concatenate([rows[s < cutoff], tied])
            for slot in gone.tolist():
                del slab.index[slab.keys[slot]]
                slab.keys[slot] = None
            self.bytes -= int(slab.cost[gone].sum())
            slab.cost[gone] = 0
            slab.live[gone] = False
            slab.free.extend(gone.tolist())
            if not slab.index:
                del self._slabs[version]
        self._size -= n

    def drop(self, version: str) -> None:
        """Forget every row of ``version`` (a namespace that is no longer served)."""
        with self._lock:
            slab = self._slabs.pop(version, None)
            if slab is not None:
                self._size -= len(slab.index)
                self.bytes -= int(slab.cost.sum())

    def versions(self) -> list[str]:
        with self._lock:
            return list(self._slabs)
