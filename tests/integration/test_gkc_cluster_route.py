"""GKC's cluster reads (:mod:`gkc.cluster_route`) against a real 3-master Redis Cluster: a resharding
(ASK, then MOVED) never fails or changes an answer, and a dead master costs only the requests that
need its slots, with the topology re-read at most once per ``refresh_s``, not once per failed request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from gkc import bundle as gkc_bundle
from gkc.bundle_reader import BundleReader
from gkc.local_redis import LocalCluster, RedisProcess
from gkc.publish import publish
from gkc.read_path import KnowledgeCenter
from gkc.redis_store import RedisStore, item_key, user_key
from services.errors import Unavailable
from tests.integration.test_gkc_store import assert_same, ns_of


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(3, tmp_path / "cluster").start()
    yield c
    c.stop()


def _node(process: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(process.url)


def _published(
    cluster: LocalCluster, tmp_path: Path, make_bundle: Callable[..., Path]
) -> tuple[RedisStore, BundleReader, str]:
    store = RedisStore(cluster.url, cluster=True)
    path = make_bundle(tmp_path / "b")
    version = publish(store, gkc_bundle.load(path), progress=False).version
    return store, BundleReader.open(path, version=version), ns_of(store, version)


def _migrate_slot(cluster: LocalCluster, slot: int, *, finish: bool) -> tuple[RedisProcess, RedisProcess]:
    """Move every key of ``slot`` from its master to another (``CLUSTER SETSLOT`` + ``MIGRATE``, as
    ``redis-cli --cluster reshard`` does); ``finish=False`` stops half-way, the slot still MIGRATING."""
    src = cluster.node_of_slot(slot)
    dst = next(n for n in cluster.nodes if n is not src)
    a, b = _node(src), _node(dst)
    src_id, dst_id = a.execute_command("CLUSTER MYID"), b.execute_command("CLUSTER MYID")
    b.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    a.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    keys = a.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    assert keys, "the slot holds keys of the request"
    a.execute_command("MIGRATE", dst.address[0], dst.address[1], "", 0, 5000, "KEYS", *keys)
    if finish:
        for node in cluster.nodes:
            _node(node).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    return src, dst


@pytest.mark.parametrize("finish", [False, True], ids=["ask", "moved"])
def test_reads_stay_exact_while_a_slot_moves(
    cluster: LocalCluster, tmp_path: Path, make_bundle: Callable[..., Path], finish: bool
) -> None:
    store, reader, ns = _published(cluster, tmp_path, make_bundle)
    kc = KnowledgeCenter(store, registry_ttl_s=0.0)
    b = reader.bundle
    user, items = str(b.user_ids[0]), [str(i) for i in b.item_ids[:40]]
    cats = [f"c{n % 8}" for n in range(len(items))]
    before = kc.lookup(user, items, cats)
    assert_same(before, reader.batch_get(user, items, cats))
    # move the slot of the user's hash (ASK: its keys are already on the target, the slot half-moved;
    # MOVED: the move is done and the client's slot table is out of date)
    _, dst = _migrate_slot(cluster, key_slot(user_key(ns, user).encode()), finish=finish)
    refreshes = store.cluster_reads.refreshes if store.cluster_reads else 0
    for _ in range(3):
        assert_same(kc.lookup(user, items, cats), before)
    assert (
        store.cluster_reads is not None and store.cluster_reads.refreshes > refreshes
    )  # the move was noticed
    if finish:  # the re-read slot table routes the user's hash to its new master
        node = store.client.get_node_from_key(user_key(ns, user))
        assert node is not None and node.port == dst.address[1]
    store.close()


def test_a_dead_master_fails_only_its_requests_without_a_topology_reread_per_request(
    cluster: LocalCluster, tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    store, reader, ns = _published(cluster, tmp_path, make_bundle)
    kc = KnowledgeCenter(store, registry_ttl_s=60.0)  # the registry may live on the dead master
    b = reader.bundle
    kc.lookup(str(b.user_ids[0]), [str(b.item_ids[0])], ["c0"])  # the registry view is cached now
    dead = cluster.node_of_slot(key_slot(user_key(ns, str(b.user_ids[0])).encode()))

    def on_dead(key: str) -> bool:
        return cluster.node_of_slot(key_slot(key.encode())) is dead

    users = [str(u) for u in b.user_ids]
    healthy_user = next(u for u in users if not on_dead(user_key(ns, u)))
    dead_user = next(u for u in users if on_dead(user_key(ns, u)))
    healthy_items = [str(i) for i in b.item_ids if not on_dead(item_key(ns, str(i)))][:20]
    assert healthy_items
    assert dead.proc is not None
    dead.proc.kill()
    dead.proc.wait()
    start = time.monotonic()
    failed = answered = 0
    # within the cluster's node timeout (2 s): after it the healthy masters answer CLUSTERDOWN
    while time.monotonic() - start < 1.2:
        try:
            kc.lookup(dead_user, healthy_items, ["c0"] * len(healthy_items))
        except Unavailable:
            failed += 1
        got = kc.lookup(healthy_user, healthy_items, ["c0"] * len(healthy_items))
        assert_same(got, reader.batch_get(healthy_user, healthy_items, ["c0"] * len(healthy_items)))
        answered += 1
    elapsed = time.monotonic() - start
    assert failed >= 10 and answered >= 10, (failed, answered)
    reads = store.cluster_reads
    assert reads is not None
    # one re-read per refresh_s at most (+1 for the first), however many requests failed; redis-py's
    # own cluster pipeline re-reads the topology once per failed request
    assert reads.refreshes <= elapsed / reads.refresh_s + 2, (reads.refreshes, failed)
    assert failed >= 4 * reads.refreshes, (reads.refreshes, failed)
    store.close()
