"""The GKC read path: resolve a version, fetch raw vectors in one round trip, pack the answer.

Transport-free: the gRPC servicer converts wire ↔ :class:`Packed`, in-process callers use
:meth:`Packed.to_lookup`. Versions are immutable, so item vectors (including "not found") are cached
per version in a bounded LRU with no invalidation; the version registry is cached for
``registry_ttl_s`` (another process may activate a version) and re-read at once when a version
number nobody has seen yet is asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np

from gkc.item_cache import ItemCache
from gkc.lookup import Lookup, dedupe
from gkc.store import READY, KnowledgeStore, VersionRecord
from services.errors import InvalidArgument, KeepError, NotFound

F32 = np.dtype("<f4")
F16 = np.dtype("<f2")


class CorruptData(KeepError):
    """Stored or received vectors do not match the manifest dims (INTERNAL / 500)."""


@dataclass(frozen=True)
class Dims:
    user: int
    item: int
    uc: int

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Dims:
        d = manifest["dims"]
        return cls(user=int(d["user"]), item=int(d["item"]), uc=int(d["uc"]))


@dataclass(frozen=True)
class Packed:
    """A lookup answer as packed bytes (the wire layout of ``keep.gkc.v1.BatchGetResponse``)."""

    version: int
    float16: bool
    dims: Dims
    user: bytes
    user_found: bool
    items: bytes
    item_rows: int
    item_found: bytes
    item_index: bytes
    ucs: bytes
    uc_rows: int
    uc_found: bytes
    uc_index: bytes

    def to_lookup(self) -> Lookup:
        return unpack(
            self.version,
            self.float16,
            self.dims,
            (self.user, self.user_found),
            (self.items, self.item_rows, self.item_found, self.item_index),
            (self.ucs, self.uc_rows, self.uc_found, self.uc_index),
        )


def unpack(
    version: int,
    float16: bool,
    dims: Dims,
    user: tuple[bytes, bool],
    items: tuple[bytes, int, bytes, bytes],
    ucs: tuple[bytes, int, bytes, bytes],
) -> Lookup:
    """Bytes → :class:`Lookup` (float32 arrays), shared by the client and in-process callers."""
    dtype = F16 if float16 else F32

    def block(data: bytes, rows: int, dim: int) -> np.ndarray:
        arr = np.frombuffer(data, dtype=dtype)
        if arr.size != rows * dim:
            raise CorruptData(f"block has {arr.size} values, expected {rows} x {dim}")
        return arr.reshape(rows, dim).astype(np.float32)

    return Lookup(
        version=version,
        user=block(user[0], 1, dims.user)[0],
        user_found=user[1],
        items=block(items[0], items[1], dims.item),
        item_found=np.frombuffer(items[2], dtype=np.uint8).astype(bool),
        item_index=np.frombuffer(items[3], dtype="<i4").astype(np.int32),
        ucs=block(ucs[0], ucs[1], dims.uc),
        uc_found=np.frombuffer(ucs[2], dtype=np.uint8).astype(bool),
        uc_index=np.frombuffer(ucs[3], dtype="<i4").astype(np.int32),
    )


class KnowledgeCenter:
    def __init__(
        self,
        store: KnowledgeStore,
        *,
        max_candidates: int = 1000,
        cache_items: int = 200_000,
        registry_ttl_s: float = 1.0,
        observer: Any = None,
    ) -> None:
        self.store = store
        self.max_candidates = max_candidates
        self.registry_ttl_s = registry_ttl_s
        self.cache = ItemCache(cache_items)
        #: Optional ``observe(version, user_found, n_users, item_found_count, n_items, uc_found, n_ucs)``.
        self.observer = observer
        self._lock = threading.Lock()
        self._ready: dict[int, Dims] = {}
        self._active: int | None = None
        #: The registry as last read (metrics, listings).
        self.records: list[VersionRecord] = []
        self._fetched = 0.0

    # --- registry view --------------------------------------------------------------------------
    def refresh(self) -> tuple[list[VersionRecord], int | None]:
        records, active = self.store.versions()
        ready = {r.version: Dims.from_manifest(r.manifest) for r in records if r.state == READY}
        with self._lock:
            self._ready, self._active, self._fetched = ready, active, time.monotonic()
            self.records = records
        return records, active

    @property
    def active(self) -> int | None:
        return self._active

    def resolve(self, version: int) -> tuple[int, Dims]:
        """The ready version that answers ``version`` (0 = active) and its dims, or NotFound."""
        if time.monotonic() - self._fetched > self.registry_ttl_s:
            self.refresh()
        if version == 0:
            active = self._active
            if active is None:
                self.refresh()
                active = self._active
            if active is None:
                raise NotFound("no knowledge version has been published yet")
            version = active
        dims = self._ready.get(version)
        if dims is None and time.monotonic() - self._fetched > 0.05:
            self.refresh()
            dims = self._ready.get(version)
        if dims is None:
            raise NotFound(f"knowledge version {version} does not exist or is not ready")
        return version, dims

    # --- reads ----------------------------------------------------------------------------------
    def batch_get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        version: int = 0,
        *,
        float16: bool = False,
    ) -> Packed:
        n = len(item_ids)
        if not user_id:
            raise InvalidArgument("user_id is empty")
        if n == 0:
            raise InvalidArgument("no candidates: send at least one (item, category)")
        if n > self.max_candidates:
            raise InvalidArgument(f"{n} candidates exceed the limit of {self.max_candidates}")
        if len(category_ids) != n:
            raise InvalidArgument(f"{n} item ids but {len(category_ids)} category ids; they are parallel")
        version, dims = self.resolve(version)
        items, item_index = dedupe(item_ids)
        cats, uc_index = dedupe(category_ids)

        width = 4 * dims.item
        cached = self.cache.get_many(version, items, width)
        todo = cached.todo
        missing_ids = [items[p] for p in todo]
        raw = self.store.read(version, user_id, cats, missing_ids)
        if todo:
            if any(value is not None and len(value) != width for value in raw.items):
                raise CorruptData(f"stored item vectors of version {version} are not {dims.item}-d")
            for pos, value in zip(todo, raw.items, strict=True):
                if value is not None:
                    cached.rows[pos] = np.frombuffer(value, np.uint8)
                    cached.found[pos] = True
            self.cache.put_many(version, missing_ids, raw.items, width)
        items_b, items_f = cached.rows.tobytes(), cached.found.view(np.uint8).tobytes()
        zero_c = bytes(4 * dims.uc)
        ucs = [zero_c if value is None else value for value in raw.ucs]
        ucs_b, ucs_f = b"".join(ucs), bytes(map(is_not, raw.ucs, repeat(None)))
        user_found = raw.user is not None
        user = raw.user if raw.user is not None else bytes(4 * dims.user)
        if len(user) != 4 * dims.user or len(ucs_b) != len(zero_c) * len(cats):
            raise CorruptData(f"stored vectors of version {version} do not match its manifest dims")
        if float16:
            user, items_b, ucs_b = (_to_f16(b) for b in (user, items_b, ucs_b))
        if self.observer is not None:
            self.observer(version, user_found, items_f.count(1), len(items), ucs_f.count(1), len(cats))
        return Packed(
            version=version,
            float16=float16,
            dims=dims,
            user=user,
            user_found=user_found,
            items=items_b,
            item_rows=len(items),
            item_found=items_f,
            item_index=item_index.astype("<i4", copy=False).tobytes(),
            ucs=ucs_b,
            uc_rows=len(cats),
            uc_found=ucs_f,
            uc_index=uc_index.astype("<i4", copy=False).tobytes(),
        )

    def lookup(
        self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str], version: int = 0
    ) -> Lookup:
        """In-process reader with the ``batch_get -> Lookup`` shape the trainer and ranker use."""
        return self.batch_get(user_id, item_ids, category_ids, version).to_lookup()


def _to_f16(data: bytes) -> bytes:
    return np.frombuffer(data, dtype=F32).astype(F16).tobytes()
