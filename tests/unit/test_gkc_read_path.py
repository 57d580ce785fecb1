"""The read path of :class:`gkc.read_path.KnowledgeCenter` over an in-memory store: packing, found-masks,
the item cache in front of the store, identities in every answer, and corrupt data refused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from gkc.bundle import Dims
from gkc.item_cache import row_cost
from gkc.read_path import KnowledgeCenter
from gkc.store import READY, RawRead, RegistryView, VersionIdentity, VersionRecord
from gkc.wire import CorruptData
from services.errors import InvalidArgument, NotFound

DIMS = Dims(user=2, item=3, uc=2)


class MemoryStore:
    """The read path's protocols (:class:`gkc.store.KnowledgeReader`, :class:`gkc.store.VersionView`) in
    memory; records what was asked."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.users = {"u1": rng.normal(size=2).astype("<f4").tobytes()}
        self.items = {f"i{n}": rng.normal(size=3).astype("<f4").tobytes() for n in range(5)}
        self.ucs = {("u1", "c1"): rng.normal(size=2).astype("<f4").tobytes()}
        self.item_reads: list[list[str]] = []

        self.identity = VersionIdentity(1, "p" * 16, "c" * 64)
        self.namespaces: list[str] = []

    def view(self) -> RegistryView:
        record = VersionRecord(self.identity, READY, f"ns{self.identity.publish_id}:", DIMS)
        return RegistryView((record,), 1, "epoch")

    def read(
        self,
        ns: str,
        user_id: str,
        category_ids: Sequence[str],
        item_ids: Sequence[str],
        fallback: str | None = None,
    ) -> RawRead:
        assert fallback is None  # full versions only here (deltas: tests/integration/test_gkc_delta.py)
        self.item_reads.append(list(item_ids))
        self.namespaces.append(ns)
        return RawRead(
            user=self.users.get(user_id),
            ucs=[self.ucs.get((user_id, c)) for c in category_ids],
            items=[self.items.get(i) for i in item_ids],
        )


def _center(store: Any, cache_rows: int = 100) -> KnowledgeCenter:
    return KnowledgeCenter(store, cache_bytes=cache_rows * row_cost(12, "i0"), registry_ttl_s=0.0)


def test_batch_get_packs_rows_masks_and_indexes_and_caches_items() -> None:
    store = MemoryStore()
    center = _center(store)
    items, cats = ["i1", "gone", "i1", "i4"], ["c1", "c1", "c2", "c1"]
    first = center.batch_get("u1", items, cats).to_lookup()
    assert store.item_reads == [["i1", "gone", "i4"]]
    want = np.frombuffer(store.items["i1"] + bytes(12) + store.items["i4"], "<f4").reshape(3, 3)
    np.testing.assert_array_equal(first.items, want)
    assert first.item_found.tolist() == [True, False, True]
    assert first.item_index.tolist() == [0, 1, 0, 2]
    assert first.uc_found.tolist() == [True, False] and first.uc_index.tolist() == [0, 0, 1, 0]
    np.testing.assert_array_equal(first.ucs[0], np.frombuffer(store.ucs["u1", "c1"], "<f4"))
    assert first.user_found and not first.ucs[1].any()

    again = center.batch_get("u1", items, cats)  # items (and "gone" as known missing) come from the cache
    assert store.item_reads[-1] == []
    assert again == center.batch_get("u1", items, cats)
    np.testing.assert_array_equal(again.to_lookup().items, first.items)
    assert again.to_lookup().item_found.tolist() == [True, False, True]
    cold = center.batch_get("nobody", ["i0"], ["c9"]).to_lookup()
    assert not cold.user_found and not cold.user.any() and cold.item_found.tolist() == [True]


def test_a_tiny_cache_still_answers_every_row_exactly() -> None:
    store = MemoryStore()
    center = _center(store, cache_rows=2)
    ids = [f"i{n}" for n in range(5)]
    for _ in range(3):
        got = center.batch_get("u1", ids, ["c1"] * 5).to_lookup()
        want = np.frombuffer(b"".join(store.items[i] for i in ids), "<f4").reshape(5, 3)
        np.testing.assert_array_equal(got.items, want)
    assert len(center.cache) <= 2


def test_every_answer_carries_its_identity_and_the_cache_follows_it() -> None:
    """A version number whose identity changed (Redis lost its data, the number came back) is never
    answered from the old identity's cached rows: the cache is keyed by the identity's namespace.

    Before version identities, the cache was keyed by the bare number and kept serving the old K̂_i."""
    store = MemoryStore()
    center = _center(store)
    first = center.batch_get("u1", ["i1"], ["c1"])
    assert (first.version, first.publish_id, first.checksum) == (1, "p" * 16, "c" * 64)
    store.items["i1"] = np.full(3, 7, "<f4").tobytes()  # what the new identity holds
    store.identity = VersionIdentity(1, "q" * 16, "d" * 64)
    again = center.batch_get("u1", ["i1"], ["c1"])
    assert (again.publish_id, again.checksum) == ("q" * 16, "d" * 64)
    assert again.to_lookup().items.tolist() == [[7.0, 7.0, 7.0]]
    assert store.namespaces[-1] == f"ns{'q' * 16}:" and center.cache.versions() == [f"ns{'q' * 16}:"]


def test_ids_longer_than_the_limit_and_unknown_versions_are_refused() -> None:
    center = _center(MemoryStore())
    with pytest.raises(InvalidArgument, match="longer than"):
        center.batch_get("u1", ["i" * 300], ["c1"])
    with pytest.raises(InvalidArgument, match="longer than"):
        center.batch_get("u" * 300, ["i1"], ["c1"])
    with pytest.raises(NotFound):
        center.batch_get("u1", ["i1"], ["c1"], version=2)


def test_vectors_of_the_wrong_size_are_corrupt_data() -> None:
    store = MemoryStore()
    store.items["i2"] = b"\0" * 8  # 2 floats where the manifest says 3
    with pytest.raises(CorruptData):
        _center(store).batch_get("u1", ["i2"], ["c1"])
    store.ucs["u1", "c1"] = b"\0" * 4
    with pytest.raises(CorruptData):
        _center(store).batch_get("u1", ["i1"], ["c1"])
