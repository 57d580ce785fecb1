"""GKC core + Redis store against a real private redis-server (and a real 3-master cluster)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gkc import bundle as gkc_bundle
from gkc.bundle_reader import BundleReader
from gkc.janitor import Janitor
from gkc.local_redis import LocalCluster
from gkc.lookup import Lookup
from gkc.publish import publish
from gkc.read_path import KnowledgeCenter
from gkc.redis_store import RedisStore
from gkc.store import READY, STAGING
from services.errors import Conflict, NotFound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(private_store: RedisStore) -> RedisStore:
    return private_store


def ns_of(store: RedisStore, version: int) -> str:
    records, _ = store.records()
    return next(r.namespace for r in records if r.version == version)


def janitor(store: RedisStore, lease_s: float = 60.0) -> Janitor:
    return Janitor(store, lease_s=lease_s, delete_after_s=0.0)


def assert_same(a: Lookup, b: Lookup) -> None:
    assert a.version == b.version
    assert a.checksum == b.checksum  # GKC and the bundle name the same content
    assert a.user.tobytes() == b.user.tobytes() and a.user_found == b.user_found
    for name in ("items", "item_found", "item_index", "ucs", "uc_found", "uc_index"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def _request(reader: BundleReader, seed: int) -> tuple[str, list[str], list[str]]:
    """A user (sometimes unknown) and candidates with repeats, unknown items and unknown categories."""
    rng = np.random.default_rng(seed)
    b = reader.bundle
    user = str(rng.choice(b.user_ids)) if seed % 5 else "cold-user"
    items = [str(i) for i in rng.choice(b.item_ids, 30)] + ["no-such-item"]
    cats = [f"c{c}" for c in rng.integers(0, 8, 31)]
    return user, items, cats


def _kc(store: RedisStore) -> KnowledgeCenter:
    return KnowledgeCenter(store, registry_ttl_s=0.0)


def test_publish_reads_back_bit_exact(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    path = make_bundle(tmp_path / "b")
    result = publish(store, gkc_bundle.load(path), batch=17, progress=False)
    reader = BundleReader.open(path, version=result.version)
    kc = _kc(store)
    for seed in range(10):
        user, items, cats = _request(reader, seed)
        assert_same(kc.lookup(user, items, cats), reader.batch_get(user, items, cats))
        assert_same(kc.lookup(user, items, cats, result.version), reader.batch_get(user, items, cats))


def test_sixth_version_retires_the_oldest_and_janitor_deletes_it(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    bundle = gkc_bundle.load(make_bundle(tmp_path / "b", users=5, items=10))
    versions = [publish(store, bundle, progress=False) for _ in range(6)]
    assert [v.retired for v in versions[:5]] == [[]] * 5
    first = versions[0].version
    assert versions[5].retired == [versions[1].version]  # v1 is active (the first publish): kept
    kc = _kc(store)
    with pytest.raises(NotFound):
        kc.view.resolve(versions[1].version)
    ns = ns_of(store, versions[1].version)
    assert janitor(store).run_once() == [versions[1].version]
    assert list(store.client.scan_iter(match=ns + "*")) == []
    records, active = store.records()
    assert active == first
    assert [r.version for r in records if r.state == READY] == [first] + [v.version for v in versions[2:]]


def test_active_version_is_never_retired(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    bundle = gkc_bundle.load(make_bundle(tmp_path / "b", users=5, items=10))
    numbers = [publish(store, bundle, progress=False).version for _ in range(5)]
    store.activate(numbers[0])
    retired = [publish(store, bundle, progress=False).retired for _ in range(3)]
    flat = [v for r in retired for v in r]
    assert numbers[0] not in flat
    assert flat == numbers[1:4]
    with pytest.raises(Conflict):
        store.retire(numbers[0], "test")
    store.activate(numbers[4])
    store.retire(numbers[0], "test")
    with pytest.raises(Conflict):
        store.activate(numbers[0])  # retiring, not ready
    with pytest.raises(NotFound):
        store.activate(9999)


def test_killed_publisher_leaves_no_visible_version_and_can_retry(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    small = make_bundle(tmp_path / "small", users=5, items=10)
    big = make_bundle(tmp_path / "big", seed=1, users=200, items=20000)
    first = publish(store, gkc_bundle.load(small), progress=False).version
    script = (
        "import sys; from gkc import bundle; from gkc.publish import publish\n"
        "from gkc.redis_store import RedisStore\n"
        "st = RedisStore(sys.argv[1]); b = bundle.load(sys.argv[2])\n"
        "def tick(n):\n    print('batch', flush=True)\n"
        "publish(st, b, batch=20, progress=False, on_batch=tick)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, store.url, str(big)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _ in range(30):  # let it write a few batches, then kill it mid-publish
        assert proc.stdout.readline() == "batch\n"
    proc.kill()
    proc.wait()
    records, active = store.records()
    staging = [r.version for r in records if r.state == STAGING]
    assert len(staging) == 1 and active == first
    kc = _kc(store)
    with pytest.raises(NotFound):
        kc.view.resolve(staging[0])
    ns = ns_of(store, staging[0])
    assert list(store.client.scan_iter(match=ns + "*", count=1000))  # partial data
    assert janitor(store, lease_s=0.0).run_once() == staging  # lease expired: abandoned and deleted
    assert not list(store.client.scan_iter(match=ns + "*", count=1000))
    retry = publish(store, gkc_bundle.load(big), batch=500, progress=False).version
    reader = BundleReader.open(big, version=retry)
    user, items, cats = _request(reader, 3)
    assert_same(kc.lookup(user, items, cats, retry), reader.batch_get(user, items, cats))


def test_reads_during_publish_and_activation_never_mix_versions(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    paths = [make_bundle(tmp_path / f"b{s}", seed=s, users=30, items=3000) for s in (1, 2)]
    v1 = publish(store, gkc_bundle.load(paths[0]), progress=False).version
    readers = {v1: BundleReader.open(paths[0], version=v1)}
    kc = _kc(store)
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[BaseException] = []

    def read_loop() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            try:
                user, items, cats = _request(readers[v1], seed)
                got = kc.lookup(user, items, cats)
                seen.add(got.version)
                assert_same(got, readers[got.version].batch_get(user, items, cats))
            except BaseException as err:
                errors.append(err)
                return

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        v2 = publish(store, gkc_bundle.load(paths[1]), batch=50, progress=False).version
        readers[v2] = BundleReader.open(paths[1], version=v2)
        store.activate(v2)
        deadline = time.monotonic() + 10
        while v2 not in seen and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert seen == {v1, v2}


@pytest.mark.slow
def test_redis_cluster_publish_read_and_delete(tmp_path: Path, make_bundle: Callable[..., Path]) -> None:
    cluster = LocalCluster(3, tmp_path / "cluster").start()
    try:
        st = RedisStore(cluster.url, cluster=True)
        path = make_bundle(tmp_path / "b")
        version = publish(st, gkc_bundle.load(path), progress=False).version
        reader = BundleReader.open(path, version=version)
        kc = _kc(st)
        for seed in range(5):
            user, items, cats = _request(reader, seed)
            assert_same(kc.lookup(user, items, cats), reader.batch_get(user, items, cats))
        ns = ns_of(st, version)
        nodes = {st.client.get_node_from_key(f"{ns}i:i{n}").name for n in range(50)}
        assert len(nodes) == 3  # items really spread over the three masters
        second = publish(st, gkc_bundle.load(path), progress=False).version
        ns2 = ns_of(st, second)
        st.retire(second, "test")
        assert janitor(st).run_once() == [second]
        assert not list(st.client.scan_iter(match=ns2 + "*"))
        st.close()
    finally:
        cluster.stop()


def test_pinned_versions_are_never_retired_and_a_publish_that_needs_one_is_refused(
    store: RedisStore, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    """Retirement skips pinned versions; when every retirable version is pinned (or active) the
    publish is refused with 409 naming the pins before it writes; an expired pin frees the version."""
    bundle = gkc_bundle.load(make_bundle(tmp_path / "b", users=5, items=10))
    numbers = [publish(store, bundle, progress=False, max_ready=3).version for _ in range(3)]
    store.pin(numbers[1], "ranker@a:ctr", 60)
    store.pin(numbers[2], "keep-train@b", 60)
    again = store.pin(numbers[1], "ranker@a:ctr", 60)  # a heartbeat keeps "since"
    assert again.since <= again.heartbeat and again.publish_id
    records, _ = store.records()
    assert {r.version: [p.holder for p in r.pins] for r in records}[numbers[1]] == ["ranker@a:ctr"]
    with pytest.raises(Conflict, match="ranker@a:ctr") as err:
        publish(store, bundle, progress=False, max_ready=3)  # v1 active, v2 and v3 pinned
    assert "keep-train@b" in str(err.value)
    assert len(store.records()[0]) == 3  # refused before a staging version was made
    with pytest.raises(Conflict, match="pinned"):
        store.retire(numbers[2], "test")
    assert store.unpin(numbers[2], "keep-train@b")
    result = publish(store, bundle, progress=False, max_ready=3)
    assert result.retired == [numbers[2]]  # the unpinned one, not the pinned older one
    store.pin(numbers[1], "ranker@a:ctr", 1)
    time.sleep(1.2)
    assert store.expire_pins() == 1
    assert publish(store, bundle, progress=False, max_ready=3).retired == [numbers[1]]
