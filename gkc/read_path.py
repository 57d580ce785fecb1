"""The GKC read path (:class:`KnowledgeCenter`): resolve a version, fetch raw vectors in one round
trip, pack the answer.

Transport-free: the gRPC servicer converts wire ↔ :class:`gkc.wire.Packed`, in-process callers use
:meth:`Packed.to_lookup`. Which versions may be served comes from a :class:`gkc.serving_view.ServingView`;
item vectors (including "not found") are cached per version identity in an LRU bounded in bytes and
dropped when the identity leaves the view. A delta version (:mod:`gkc.delta`) reads every entry it lacks
from its base in the same round trip; its cached rows are the resolved ones, under the delta's own
identity (never the base's), and it is not served at all unless its base is ready as the very identity
it names. Every answer carries the identity it was read from.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import is_not
from typing import Any, Protocol

import numpy as np

from contract import quantize as quant
from gkc.bundle import MAX_ID_CHARS
from gkc.item_cache import ItemCache
from gkc.lookup import Lookup, dedupe
from gkc.serving_view import ServingView
from gkc.store import KnowledgeReader, VersionView
from gkc.wire import F16, F32, CorruptData, Packed
from services.errors import InvalidArgument


class _Store(KnowledgeReader, VersionView, Protocol):
    """The read path reads data and the registry's view, nothing else."""


class KnowledgeCenter:
    def __init__(
        self,
        store: _Store,
        *,
        max_candidates: int = 1000,
        cache_bytes: int = 128 << 20,
        registry_ttl_s: float = 1.0,
        registry_stale_s: float = 10.0,
        observer: Any = None,
    ) -> None:
        self.store = store
        self.max_candidates = max_candidates
        self.cache = ItemCache(cache_bytes)
        self.view = ServingView(
            store, ttl_s=registry_ttl_s, stale_s=registry_stale_s, on_drop=self.cache.drop
        )
        #: Optional ``observe(version, user_found, n_users, item_found_count, n_items, uc_found, n_ucs)``.
        self.observer = observer

    @property
    def active(self) -> int | None:
        return self.view.active

    # --- reads ----------------------------------------------------------------------------------
    def batch_get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        version: int = 0,
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
        record = self.view.resolve(version)
        base = self.view.base_of(record)  # a delta reads through to its base, in the same round trip
        fallback = None if base is None else base.namespace
        version, dims, ns, dtype = record.version, record.dims, record.namespace, record.dtype
        items, item_index = dedupe(item_ids)
        cats, uc_index = dedupe(category_ids)
        if (
            len(user_id) > MAX_ID_CHARS
            or max(map(len, items)) > MAX_ID_CHARS
            or max(map(len, cats)) > MAX_ID_CHARS
        ):
            raise InvalidArgument(f"an id is longer than {MAX_ID_CHARS} characters (the limit of every id)")

        width = quant.row_bytes(dtype, dims.item)
        cached = self.cache.get_many(ns, items, width)
        todo = cached.todo
        missing_ids = [items[p] for p in todo]
        raw = self.store.read(ns, user_id, cats, missing_ids, fallback)
        if todo:
            if any(value is not None and len(value) != width for value in raw.items):
                raise CorruptData(f"stored item vectors of version {version} are not {dims.item}-d")
            for pos, value in zip(todo, raw.items, strict=True):
                if value is not None:
                    cached.rows[pos] = np.frombuffer(value, np.uint8)
                    cached.found[pos] = True
            self.cache.put_many(ns, missing_ids, raw.items, width)
        items_b, items_f = cached.rows.tobytes(), cached.found.view(np.uint8).tobytes()
        zero_c = bytes(quant.row_bytes(dtype, dims.uc))
        ucs = [zero_c if value is None else value for value in raw.ucs]
        ucs_b, ucs_f = b"".join(ucs), bytes(map(is_not, raw.ucs, repeat(None)))
        user_found = raw.user is not None
        user_width = quant.row_bytes(dtype, dims.user)
        user = raw.user if raw.user is not None else bytes(user_width)
        if len(user) != user_width or len(ucs_b) != len(zero_c) * len(cats):
            raise CorruptData(f"stored vectors of version {version} do not match its manifest dims")
        if dtype != quant.FLOAT32 or float16:
            user, items_b, ucs_b = (
                _wire(b, dtype, dim, float16)
                for b, dim in ((user, dims.user), (items_b, dims.item), (ucs_b, dims.uc))
            )
        if self.observer is not None:
            self.observer(version, user_found, items_f.count(1), len(items), ucs_f.count(1), len(cats))
        return Packed(
            version=version,
            publish_id=record.identity.publish_id,
            checksum=record.identity.checksum,
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


def _wire(data: bytes, dtype: str, dim: int, float16: bool) -> bytes:
    """Stored rows → the wire format asked for (float16 rows stored as float16 pass through)."""
    if dtype == quant.FLOAT16 and float16:
        return data
    if dtype == quant.FLOAT32:
        return np.frombuffer(data, dtype=F32).astype(F16).tobytes()
    values = quant.dequantize(data, dtype, dim)
    return (values.astype(F16) if float16 else values).tobytes()
