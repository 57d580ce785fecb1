"""Redis memory (issue 11, cases 2, 5 and 8): a Redis that may evict is refused (or, when accepted,
versions that lost keys are marked damaged); a full Redis refuses a publish before it writes, a publish
that fails midway leaves no keys, and DELETE / activate still work; hostile reads cannot grow a worker's
memory without bound."""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from bench import procfs
from gkc.client import GkcOpsClient, tar_bundle
from gkc.local_redis import RedisProcess, free_port
from protos import gkc_pb2, gkc_pb2_grpc
from services.launch import ServiceStartError
from tests.support.faultkit import (
    BackgroundUpload,
    publish_tagged,
    random_request,
    response_tags,
    tagged_bundle,
    wait_staging,
)
from tests.support.servers import launch_gkc

pytestmark = pytest.mark.reliability


def _redis(path: Path, maxmemory: str, policy: str) -> RedisProcess:
    port = free_port()
    config = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(path),
        "appendonly": "no",
        "save": '""',
        "maxmemory": maxmemory,
        "maxmemory-policy": policy,
    }
    return RedisProcess(path, config, ("127.0.0.1", port)).start()


def _fill(url: str, mib: int, prefix: str = "junk") -> None:
    """Write ``mib`` MiB of someone else's keys (values of 64 KiB), ignoring refusals."""
    client = redis.Redis.from_url(url)
    value = b"x" * (64 << 10)
    for n in range(mib * 16):
        try:
            client.set(f"{prefix}:{n}", value)
        except redis.exceptions.ResponseError:
            return


def _gkc_keys(url: str) -> int:
    return sum(1 for _ in redis.Redis.from_url(url).scan_iter(match="gkc:v*", count=1000))


def test_a_redis_that_may_evict_is_refused_or_its_damaged_versions_are_never_served(tmp_path: Path) -> None:
    """Case 2. Against ``maxmemory`` + ``allkeys-lru`` GKC does not start (one-line reason); with
    ``GKC_ACCEPT_EVICTION=true`` it serves, and when Redis evicts GKC's keys the versions that lost
    keys are listed ``damaged`` with the reason and answered NOT_FOUND, never OK with rows missing.

    Before: a publish returned 201 while keys were evicted; ready versions lost 71-80% of their items
    and were still listed ready and answered OK with zero rows."""
    server = _redis(tmp_path / "redis", "40mb", "allkeys-lru")
    try:
        with pytest.raises(ServiceStartError, match="maxmemory-policy allkeys-lru"):
            launch_gkc(tmp_path / "refused", server.url)
        svc = launch_gkc(tmp_path / "gkc", server.url, GKC_ACCEPT_EVICTION="true")
        try:
            versions = publish_tagged(svc, tmp_path, [1.0, 2.0])
            ops = GkcOpsClient(svc.http_url, svc.token)
            _fill(server.url, 80)  # twice maxmemory of newer keys: LRU evicts GKC's keys
            assert int(redis.Redis.from_url(server.url).info("stats")["evicted_keys"]) > 0
            deadline = time.monotonic() + 30
            states: dict[int, str] = {}
            while time.monotonic() < deadline:
                states = {v["version"]: v["state"] for v in ops.versions(True)}
                if all(states.get(v) == "damaged" for v in versions.values()):
                    break
                time.sleep(0.5)
            damaged = [v for v in ops.versions(True) if v["state"] == "damaged"]
            assert {v["version"] for v in damaged} == set(versions.values()), states
            # lost keys, or the whole registry entry (allkeys-lru evicts the registry's keys too)
            assert all("keys in Redis" in v["reason"] or "lost" in v["reason"] for v in damaged), damaged
            time.sleep(2.5)  # every process re-reads the registry within GKC_REGISTRY_TTL_S (1 s)
            with grpc.insecure_channel(svc.grpc_addr) as channel:
                stub = gkc_pb2_grpc.GkcStub(channel)
                for version in versions.values():
                    with pytest.raises(grpc.RpcError) as err:
                        stub.BatchGet(random_request(random.Random(0), version), timeout=5)
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND
            print(
                f"\nRELIABILITY eviction refused_at_start=1 damaged={sorted(v['version'] for v in damaged)}"
            )
        finally:
            svc.stop()
    finally:
        server.stop()


def test_a_full_redis_refuses_before_writing_cleans_a_failed_publish_and_still_deletes(
    tmp_path: Path,
) -> None:
    """Case 5. Redis with ``maxmemory`` + ``noeviction``: a publish that does not fit is refused before
    it writes (507 with the numbers); one that fails midway (Redis filled up under it) answers 507 and
    leaves no keys; DELETE and activate keep working while Redis is full; ``/healthz`` reports the
    headroom.

    Before: the overflowing publish was a 500, then DELETE, activate and even a small publish were
    500s, the half-written staging version was never cleaned and ``/healthz`` stayed 200 silently."""
    server = _redis(tmp_path / "redis", "48mb", "noeviction")
    # small batches on one writer: the mid-way publish must still be running when Redis fills up (batched
    # multi-entry writes made a 200-row batch publish finish first)
    svc = launch_gkc(tmp_path / "gkc", server.url, GKC_PUBLISH_BATCH="20", GKC_PUBLISH_WRITERS="1")
    try:
        ops = GkcOpsClient(svc.http_url, svc.token)
        first, second = sorted(publish_tagged(svc, tmp_path, [1.0, 2.0]).values())
        keys_before = _gkc_keys(server.url)
        headers = {"Authorization": f"Bearer {svc.token}"}
        huge = tar_bundle(tagged_bundle(tmp_path / "huge", 3.0, items=200_000, dim=64), tmp_path / "huge.tar")
        r = httpx.post(f"{svc.http_url}/v1/versions", content=huge.read_bytes(), headers=headers, timeout=120)
        assert r.status_code == 507 and "MiB free" in r.json()["error"], (r.status_code, r.text[:300])
        assert _gkc_keys(server.url) == keys_before  # refused before a byte was written

        body = tar_bundle(tagged_bundle(tmp_path / "mid", 4.0, items=60_000, dim=16), tmp_path / "mid.tar")
        upload = BackgroundUpload(svc, body.read_bytes())
        wait_staging(ops)
        _fill(server.url, 64)  # Redis is full now, under the running publish
        answer = upload.result()
        assert isinstance(answer, httpx.Response) and answer.status_code == 507, answer
        assert "out of memory" in answer.json()["error"]
        assert _gkc_keys(server.url) == keys_before  # the failed version's keys are gone
        assert sorted(v["version"] for v in ops.versions(True)) == [first, second]

        assert ops.activate(second)["active"]  # while Redis is full
        assert ops.activate(first)["active"]
        assert ops.delete(second)["state"] == "retiring"
        health = httpx.get(f"{svc.http_url}/healthz").json()
        redis_side = health["redis"]
        assert redis_side["free_bytes"] == redis_side["limit_bytes"] - redis_side["used_bytes"], health
        assert redis_side["free_bytes"] < redis_side["limit_bytes"] // 10, health  # full, and it says so
        small = tar_bundle(tagged_bundle(tmp_path / "small", 5.0), tmp_path / "small.tar")
        r = httpx.post(f"{svc.http_url}/v1/versions", content=small.read_bytes(), headers=headers, timeout=60)
        assert r.status_code == 507, (r.status_code, r.text[:300])
        with grpc.insecure_channel(svc.grpc_addr) as channel:
            resp = gkc_pb2_grpc.GkcStub(channel).BatchGet(random_request(random.Random(0), 0), timeout=5)
        assert (resp.version, response_tags(resp)) == (first, ({1.0}, 0))  # reads go on
        print(f"\nRELIABILITY redis_full refused=507 failed_midway=507 keys_left=0 health={health}")
    finally:
        svc.stop()
        server.stop()


def _rss_bytes(pid: int) -> int:
    return procfs.status(pid)["VmRSS"]


def test_hostile_reads_cannot_grow_a_worker_without_bound(tmp_path: Path) -> None:
    """Case 8. Ids over the documented limit (256 characters) are INVALID_ARGUMENT; 80 BatchGets of
    1,000 unique unknown ids at the limit grow the worker by less than its cache bound (bytes) plus a
    margin, however long the ids.

    Before: 80 unauthenticated BatchGets with unique unknown 8 KB item ids took a worker from 139 MB
    to 826 MB (the cache was bounded in rows, not bytes)."""
    cache = 32 << 20
    svc = launch_gkc(tmp_path / "gkc", None, GKC_CACHE_BYTES=str(cache), GKC_MAX_CANDIDATES="1000")
    try:
        version = publish_tagged(svc, tmp_path, [1.0])[1.0]
        with grpc.insecure_channel(svc.grpc_addr) as channel:
            stub = gkc_pb2_grpc.GkcStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.BatchGet(
                    gkc_pb2.BatchGetRequest(user_id="u1", item_ids=["x" * 8192], category_ids=["c1"]),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stub.BatchGet(random_request(random.Random(0), version), timeout=5)
            before = _rss_bytes(svc.proc.pid)
            for batch in range(80):
                ids = [f"{batch}-{n}-".ljust(256, "x") for n in range(1000)]
                stub.BatchGet(
                    gkc_pb2.BatchGetRequest(user_id="u1", item_ids=ids, category_ids=["c1"] * 1000),
                    timeout=10,
                )
            grown = _rss_bytes(svc.proc.pid) - before
        assert grown < cache + (48 << 20), f"the worker grew by {grown / 2**20:.0f} MiB"
        mib = grown / 2**20
        print(
            f"\nRELIABILITY hostile_reads requests=80x1000 rss_growth_mib={mib:.1f} bound_mib={cache >> 20}"
        )
    finally:
        svc.stop()
