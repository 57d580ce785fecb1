"""BundleReader (the offline reader) and the byte packing shared by GKC's server and client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gkc import bundle as B
from gkc.bundle import Dims
from gkc.bundle_reader import BundleReader
from gkc.item_cache import ItemCache, row_cost
from gkc.settings import GkcSettings
from gkc.wire import unpack
from services.errors import InvalidArgument, NotFound


@pytest.fixture
def reader(tmp_path: Path) -> BundleReader:
    rng = np.random.default_rng(3)
    built = B.build(
        user_ids=["a", "b"],
        user_vectors=rng.normal(size=(2, 4)),
        item_ids=["x", "y", "z"],
        item_vectors=rng.normal(size=(3, 4)),
        uc_user_ids=["a", "a", "b"],
        uc_category_ids=["c1", "c2", "c1"],
        uc_vectors=rng.normal(size=(3, 2)),
    )
    return BundleReader.open(B.save(built, tmp_path / "b"), version=7)


def test_reader_dedupes_and_marks_missing(reader: BundleReader) -> None:
    b = reader.bundle
    got = reader.batch_get("a", ["y", "nope", "y", "x"], ["c2", "c9", "c2", "c1"])
    assert got.version == 7 and got.user_found
    assert np.array_equal(got.user, b.user_vectors[0])
    assert got.item_index.tolist() == [0, 1, 0, 2]
    assert got.item_found.tolist() == [True, False, True]
    assert np.array_equal(got.items[0], b.item_vectors[1]) and not got.items[1].any()
    assert got.uc_index.tolist() == [0, 1, 0, 2]
    assert got.uc_found.tolist() == [True, False, True]
    assert np.array_equal(got.ucs[0], b.uc_vectors[1]) and np.array_equal(got.ucs[2], b.uc_vectors[0])


def test_reader_cold_user_and_errors(reader: BundleReader) -> None:
    got = reader.batch_get("ghost", ["x"], ["c1"])
    assert not got.user_found and not got.user.any() and got.uc_found.tolist() == [False]
    with pytest.raises(NotFound):
        reader.batch_get("a", ["x"], ["c1"], version=3)
    with pytest.raises(InvalidArgument):
        reader.batch_get("a", ["x", "y"], ["c1"])


def test_unpack_float16_is_close_not_identical() -> None:
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(2, 3)).astype(np.float32)
    f16 = vec.astype("<f2").tobytes()
    got = unpack(
        (1, "", ""),
        True,
        Dims(3, 3, 3),
        (f16[:6], True),
        (f16, 2, b"\1\1", b"\0\0\0\0"),
        (f16, 2, b"\1\0", b""),
    )
    assert got.items.dtype == np.float32
    np.testing.assert_allclose(got.items, vec, rtol=1e-3, atol=1e-3)
    assert got.uc_found.tolist() == [True, False]


#: What one cached 2-byte row with a one-character id costs (the caches below hold N of them).
ROW = row_cost(2, "a")


def _cached(cache: ItemCache, version: str, ids: list[str]) -> tuple[list[bytes | None], list[int]]:
    got = cache.get_many(version, ids, 2)
    vals = [bytes(row) if found else None for row, found in zip(got.rows, got.found, strict=True)]
    return vals, got.todo


def test_item_cache_is_bounded_and_per_version() -> None:
    cache = ItemCache(2 * ROW)
    cache.put_many("v1", ["a", "b"], [b"A1", None], 2)
    got = cache.get_many("v1", ["a", "b", "c"], 2)
    assert got.rows.tobytes() == b"A1\0\0\0\0" and got.found.tolist() == [True, False, False]
    assert got.todo == [2]  # "b" is cached as known-missing, "c" is not cached
    assert (cache.hits, cache.misses) == (2, 1)
    assert _cached(cache, "v2", ["b"])[1] == [0]  # versions never share entries
    cache.drop("v1")
    assert _cached(cache, "v1", ["a", "b"])[1] == [0, 1] and len(cache) == 0


def test_item_cache_evicts_the_least_recently_used_entry() -> None:
    cache = ItemCache(3 * ROW)
    cache.put_many("v1", ["a", "b", "c"], [b"A1", b"B1", b"C1"], 2)
    _cached(cache, "v1", ["a"])  # a read makes "a" the most recently used; "b" is now the oldest
    cache.put_many("v1", ["d"], [b"D1"], 2)  # full: the LRU entry goes (FIFO would drop "a")
    vals, todo = _cached(cache, "v1", ["a", "b", "c", "d"])
    assert todo == [1] and vals == [b"A1", None, b"C1", b"D1"]
    _cached(cache, "v1", ["a", "d"])  # "c" is now the oldest
    cache.put_many("v1", ["e"], [b"E1"], 2)
    assert _cached(cache, "v1", ["a", "c", "d", "e"])[1] == [1] and len(cache) == 3


def test_item_cache_lru_spans_versions_and_evicts_in_batches() -> None:
    cache = ItemCache(3 * ROW)
    cache.put_many("v1", ["a", "b"], [b"A1", b"B1"], 2)
    cache.put_many("v2", ["a"], [b"A2"], 2)
    _cached(cache, "v1", ["a"])  # 1:a is now newer than 2:a; 1:b is the oldest
    cache.put_many("v2", ["b"], [b"B2"], 2)
    assert _cached(cache, "v1", ["b"])[1] == [0]
    cache.put_many("v1", ["c"], [b"C1"], 2)  # oldest now: 2:a
    vals, todo = _cached(cache, "v2", ["a", "b"])
    assert todo == [0] and vals == [None, b"B2"] and len(cache) == 3

    big = ItemCache(32 * ROW + 32)  # evicts capacity // 16 = 2 extra entries at once, oldest first
    big.put_many("v1", [str(i) for i in range(32)], [b"vv"] * 32, 2)
    _cached(big, "v1", ["0", "1"])
    big.put_many("v1", ["new"], [b"nn"], 2)
    assert len(big) == 30
    vals, todo = _cached(big, "v1", ["0", "1", "2", "3", "4", "5", "new"])
    assert todo == [2, 3, 4] and vals[-1] == b"nn"  # 2, 3 and 4 were the least recently used
    big.put_many("v1", ["x", "y", "z"], [b"xx", b"yy", b"zz"], 2)  # freed rows are reused
    assert _cached(big, "v1", ["x", "y", "z", "0"])[0] == [b"xx", b"yy", b"zz", b"vv"]


def test_item_cache_is_bounded_in_bytes_whatever_the_id_length() -> None:
    """Long ids cost what they weigh: 80 batches of unique unknown 8 KB ids keep the cache under its
    byte bound (before, it was bounded in rows and such ids took a worker from 139 MB to 826 MB)."""
    cache = ItemCache(1 << 20)
    for batch in range(80):
        ids = [f"{batch}-{n}-" + "x" * 8000 for n in range(20)]
        cache.put_many("v1", ids, [None] * len(ids), 256)
        assert cache.bytes <= 1 << 20
    assert 0 < len(cache) < 20 * 80 and cache.bytes > (1 << 20) // 2


def test_settings_refuse_placeholder_token_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GKC_API_TOKEN", "changeme")
    with pytest.raises(InvalidArgument, match="GKC_API_TOKEN"):
        GkcSettings().check()
    monkeypatch.setenv("GKC_DEV_MODE", "true")
    GkcSettings().check()
    monkeypatch.setenv("GKC_DEV_MODE", "false")
    monkeypatch.setenv("GKC_API_TOKEN", "a-real-long-token-value")
    settings = GkcSettings()
    settings.check()
    assert (settings.grpc_port, settings.http_port, settings.host) == (50051, 8081, "127.0.0.1")
