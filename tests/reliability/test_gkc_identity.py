"""Version identity (issue 11, cases 1 and 4): a version number is never handed out twice, every answer
names the identity it was read from, and Redis losing or rolling back its data is found and said.

Each test uses tagged bundles (every value of a bundle is one number), so an answer's rows tell which
publish they came from.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import pytest
import redis

from gkc.client import GkcOpsClient
from gkc.local_redis import EmbeddedRedis
from protos import gkc_pb2_grpc
from tests.support.faultkit import publish_tagged, random_request, response_tags
from tests.support.servers import launch_gkc

pytestmark = pytest.mark.reliability


def test_flushall_then_publish_never_reuses_a_number_nor_mixes_cached_items(tmp_path: Path) -> None:
    """Case 1. Redis loses its data (FLUSHALL) while GKC runs; the next publish gets a new number, and
    the old number answers NOT_FOUND instead of the new K̂_u/K̂_uc with the old, cached K̂_i.

    Before: the next publish got number 1 again and BatchGet(v1) mixed the new bundle's K̂_u/K̂_uc with
    the old one's K̂_i from the item cache, until the worker restarted."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    svc = launch_gkc(tmp_path / "gkc", server.url)
    try:
        first = publish_tagged(svc, tmp_path, [1.0])[1.0]
        with grpc.insecure_channel(svc.grpc_addr) as channel:
            stub = gkc_pb2_grpc.GkcStub(channel)
            request = random_request(random.Random(0), first)
            old = stub.BatchGet(request, timeout=5)  # its items are cached now
            assert response_tags(old) == ({1.0}, 0)
            redis.Redis.from_url(server.url).flushall()
            second = publish_tagged(svc, tmp_path / "again", [2.0])[2.0]
            assert second > first, "a version number was handed out twice"
            with pytest.raises(grpc.RpcError) as err:
                stub.BatchGet(request, timeout=5)  # the old number: gone, not answered from the cache
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            new = stub.BatchGet(random_request(random.Random(0), second), timeout=5)
            assert response_tags(new) == ({2.0}, 0)
            assert (new.publish_id, new.checksum) != (old.publish_id, old.checksum)
            assert len(new.checksum) == 64 and len(new.publish_id) == 16
        print(f"\nRELIABILITY flushall first={first} after_flush={second} mixed_answers=0")
    finally:
        svc.stop()
        server.stop()


def _wait_gone(ops: GkcOpsClient, version: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(v["version"] == version for v in ops.versions(True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(v["version"] != version for v in ops.versions(True)), f"v{version} was never deleted"


def test_truncated_aof_is_found_and_said_and_numbers_are_not_reused(tmp_path: Path) -> None:
    """Case 4. With the embedded default (AOF), GKC restarts on an AOF cut back to an earlier point:
    versions that had been published are listed ``damaged`` ("lost"), a deleted version that came back
    is ``damaged`` (never served), and the next publish gets a number above every earlier one. A
    deleted AOF (an empty Redis) is said too.

    Before: 5 versions that had returned 201 were silently gone, 3 deleted ones were back as ready and
    the next publish reused a number with different content."""
    env = {"GKC_REGISTRY_STALE_S": "1", "GKC_REDIS_TIMEOUT_S": "0.5"}
    svc = launch_gkc(tmp_path / "gkc", None, **env)  # the embedded Redis, under tmp_path/gkc/data
    aof = tmp_path / "gkc" / "data" / "gkc.aof"
    try:
        ops = GkcOpsClient(svc.http_url, svc.token)
        kept = publish_tagged(svc, tmp_path, [1.0, 2.0])
        doomed = publish_tagged(svc, tmp_path, [3.0])[3.0]
        time.sleep(1.5)  # appendfsync everysec
        cut = aof.stat().st_size  # Redis will come back to here: "doomed" ready, "late" not yet
        ops.delete(doomed)
        _wait_gone(ops, doomed)  # its keys and registry entry are gone from Redis
        late = publish_tagged(svc, tmp_path / "late", [4.0, 5.0])
        time.sleep(1.5)
    finally:
        svc.stop()
    aof.write_bytes(aof.read_bytes()[: cut + 7])  # cut back, with a torn command at the end
    svc = launch_gkc(tmp_path / "gkc", None, **env)
    try:
        ops = GkcOpsClient(svc.http_url, svc.token)
        listed = {v["version"]: v for v in ops.versions(True)}
        for version in late.values():
            assert listed[version]["state"] == "damaged", listed.get(version)
            assert "lost" in listed[version]["reason"]
        assert listed[doomed]["state"] == "damaged" and "deleted before" in listed[doomed]["reason"]
        ready = sorted(v["version"] for v in ops.versions())
        assert ready == sorted(kept.values())
        fresh = publish_tagged(svc, tmp_path / "fresh", [6.0])[6.0]
        assert fresh > max(late.values()), "a version number was handed out twice"
        with grpc.insecure_channel(svc.grpc_addr) as channel:
            stub = gkc_pb2_grpc.GkcStub(channel)
            for version in [*late.values(), doomed]:
                with pytest.raises(grpc.RpcError) as err:
                    stub.BatchGet(random_request(random.Random(0), version), timeout=5)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert response_tags(stub.BatchGet(random_request(random.Random(0), fresh), timeout=5)) == (
                {6.0},
                0,
            )
        log = svc.log()
        assert "integrity:" in log and "lost" in log
    finally:
        svc.stop()
    aof.unlink()  # a deleted AOF: Redis starts empty
    svc = launch_gkc(tmp_path / "gkc", None, **env)
    try:
        ops = GkcOpsClient(svc.http_url, svc.token)
        listed = {v["version"]: v for v in ops.versions(True)}
        assert {v for v, r in listed.items() if r["state"] == "damaged"} >= {*kept.values(), fresh}
        assert ops.versions() == []
        assert "Redis lost or replaced its data" in svc.log()
        assert publish_tagged(svc, tmp_path / "after", [7.0])[7.0] > fresh
        print(
            f"\nRELIABILITY truncated_aof lost={sorted(late.values())} resurrected={doomed} "
            "reused_numbers=0 served_lost_or_deleted=0"
        )
    finally:
        svc.stop()
