"""Publishing under faults: reads during the 6th and 7th publish, and a GKC killed half-way through one.

Each version is a :func:`faultkit.tagged_bundle` whose every value is the version's tag, so a response
whose found rows carry more than one value (or another version's value) is a torn read, and a known id
answered "missing" from a ready version is a partial read.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from gkc.client import GkcOpsClient, tar_bundle
from gkc.local_redis import EmbeddedRedis
from protos import gkc_pb2, gkc_pb2_grpc
from tests.support.faultkit import (
    BackgroundUpload,
    ReadLoad,
    publish_tagged,
    random_request,
    response_tags,
    tagged_bundle,
    wait_staging,
)
from tests.support.servers import launch_gkc

pytestmark = pytest.mark.reliability


def test_sixth_and_seventh_publish_under_read_load_give_no_torn_reads(start_gkc, tmp_path: Path) -> None:
    svc = start_gkc(None, GKC_MAX_READY_VERSIONS="5", GKC_REGISTRY_TTL_S="0.2")
    tag_of = {v: t for t, v in publish_tagged(svc, tmp_path, [1.0, 2.0, 3.0, 4.0, 5.0]).items()}
    known = list(tag_of)
    checked = [0]
    lock = threading.Lock()

    def pick(rng: random.Random) -> int:
        return rng.choice([0, *known])

    def check(request: gkc_pb2.BatchGetRequest, resp: gkc_pb2.BatchGetResponse) -> None:
        tags, missing = response_tags(resp)
        assert request.version in (0, resp.version), (request.version, resp.version)
        assert tags == {tag_of[resp.version]}, f"torn read: v{resp.version} answered values {tags}"
        assert missing == 0, f"partial read: v{resp.version} answered {missing} known ids as missing"
        with lock:
            checked[0] += 1

    ops = GkcOpsClient(svc.http_url, svc.token)
    with ReadLoad(svc.grpc_addr, pick, check, threads=3) as load:
        assert load.wait_for("OK", 50)
        for tag in (6.0, 7.0):
            version = int(ops.publish(tagged_bundle(tmp_path / f"new-{tag}", tag), progress=False)["version"])
            tag_of[version] = tag
            known.append(version)
            ops.activate(version)
            ok_now = load.codes["OK"]
            assert load.wait_for("OK", ok_now + 50)  # reads keep flowing on the new version
        time.sleep(1.0)  # the janitor deletes the retired versions' keys while reads continue
    assert not load.errors, load.errors[:5]
    assert set(load.codes) <= {"OK", "NOT_FOUND"}, load.codes  # NOT_FOUND: a retired version was asked
    assert checked[0] >= 150, checked
    ready = {v["version"] for v in ops.versions()}
    assert ready == set(known[-5:])  # five kept, the two oldest retired
    print(f"\nRELIABILITY publish_under_load responses_checked={checked[0]} codes={dict(load.codes)}")


def test_gkc_killed_mid_publish_leaves_no_partial_version(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    started = []
    try:
        env = {"GKC_PUBLISH_BATCH": "20", "GKC_PUBLISH_LEASE_S": "2"}
        svc = launch_gkc(tmp_path / "gkc1", redis.url, **env)
        started.append(svc)
        good = publish_tagged(svc, tmp_path, [1.0])[1.0]
        big = tagged_bundle(tmp_path / "big", 2.0, items=30_000)
        body = tar_bundle(big, tmp_path / "big.tar").read_bytes()
        upload = BackgroundUpload(svc, body, timeout_s=120)
        ops = GkcOpsClient(svc.http_url, svc.token)
        staging = wait_staging(ops)
        time.sleep(0.2)  # some batches are in Redis now
        svc.stop(signal.SIGKILL)
        assert isinstance(upload.result(30), Exception)  # the upload died with the server

        again = launch_gkc(tmp_path / "gkc2", redis.url, **env)
        started.append(again)
        ops = GkcOpsClient(again.http_url, again.token)
        assert [v["version"] for v in ops.versions()] == [good]  # the half version is not listed as ready
        with grpc.insecure_channel(again.grpc_addr) as channel:
            stub = gkc_pb2_grpc.GkcStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.BatchGet(random_request(random.Random(0), staging), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            resp = stub.BatchGet(random_request(random.Random(0), 0), timeout=5)
            assert (resp.version, response_tags(resp)) == (good, ({1.0}, 0))

            retried = int(ops.publish(big, progress=False)["version"])  # the publish can be retried
            assert retried not in (good, staging)
            resp = stub.BatchGet(random_request(random.Random(1), retried), timeout=5)
            assert response_tags(resp) == ({2.0}, 0)
        deadline = time.monotonic() + 30  # the janitor abandons the stale staging version (lease 2 s)
        while any(v["version"] == staging for v in ops.versions(True)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(v["version"] != staging for v in ops.versions(True))
        assert sorted(v["version"] for v in ops.versions()) == sorted([good, retried])
    finally:
        for svc in started:
            svc.stop(signal.SIGKILL)
        redis.stop()
