"""Safe deletion (issue 11, cases 3 and 6): no OK answer lacks rows because of a concurrent DELETE, and
a DELETE of a version still being published stops that publish and leaves no key behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from gkc.client import GkcOpsClient, tar_bundle
from gkc.local_redis import EmbeddedRedis
from protos import gkc_pb2
from tests.support.faultkit import (
    BackgroundUpload,
    LatencyProxy,
    ReadLoad,
    publish_tagged,
    response_tags,
    tagged_bundle,
    wait_staging,
)
from tests.support.servers import launch_gkc

pytestmark = pytest.mark.reliability


def _keys_outside(url: str, namespaces: set[str]) -> int:
    client = redis.Redis.from_url(url)
    return sum(
        1
        for k in client.scan_iter(match="gkc:v*", count=1000)
        if not k.decode().startswith(tuple(namespaces))
    )


def _namespaces(ops: GkcOpsClient) -> set[str]:
    """Where each listed version's keys live (``gkc:v<N>:`` before versions had identities)."""
    return {
        f"gkc:v{v['version']}.{v['identity']['publish_id'][:8]}:"
        if "identity" in v
        else f"gkc:v{v['version']}:"
        for v in ops.versions(True)
    }


def test_delete_under_read_load_with_two_workers_never_answers_ok_without_rows(tmp_path: Path) -> None:
    """Case 3. Two gRPC workers serve a version under read load while it is DELETEd (three times): every
    answer is
    OK with every known row, or NOT_FOUND; never OK with rows missing. The keys go only after no worker
    can still answer from its view (two-phase deletion).

    Before: 510 OK answers reported known ids as missing (the other worker trusted its registry view
    for up to 1 s while the janitor already deleted the keys). Against the old code this test saw it
    in one run of five (80 such answers): the window is a race of up to ``GKC_REGISTRY_TTL_S``."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    env = {"GKC_WORKERS": "2", "GKC_REGISTRY_STALE_S": "2", "GKC_REDIS_TIMEOUT_S": "0.5"}
    svc = launch_gkc(tmp_path / "gkc", server.url, **env)
    try:
        time.sleep(1.0)  # the second worker binds the port
        keep = publish_tagged(svc, tmp_path, [1.0])[1.0]
        ops = GkcOpsClient(svc.http_url, svc.token)
        tag_of = {keep: 1.0}
        current = [keep]
        counts = {"ok_full": 0, "ok_missing_rows": 0}
        lock = threading.Lock()

        def check(request: gkc_pb2.BatchGetRequest, resp: gkc_pb2.BatchGetResponse) -> None:
            tags, missing = response_tags(resp)
            with lock:
                counts["ok_missing_rows" if missing else "ok_full"] += 1
            assert missing == 0 and tags == {tag_of[resp.version]}, (resp.version, tags, missing)

        with ReadLoad(svc.grpc_addr, lambda r: current[0], check, threads=8, timeout_s=3.0) as load:
            for cycle in range(3):  # three versions, each deleted while it is being read
                tag = 2.0 + cycle
                doomed = publish_tagged(svc, tmp_path / f"c{cycle}", [tag])[tag]
                tag_of[doomed] = tag
                current[0] = doomed
                assert load.wait_for("OK", load.codes["OK"] + 150)
                ops.delete(doomed)
                deadline = time.monotonic() + 60
                while any(v["version"] == doomed for v in ops.versions(True)) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert all(v["version"] != doomed for v in ops.versions(True)), "never deleted"
                # the load goes on after the keys went
                assert load.wait_for("NOT_FOUND", load.codes["NOT_FOUND"] + 100)
        assert counts["ok_missing_rows"] == 0 and not load.errors, (counts, load.errors[:3])
        assert set(load.codes) <= {"OK", "NOT_FOUND"}, load.codes
        assert _keys_outside(server.url, _namespaces(ops)) == 0  # the deleted versions' keys are gone
        assert [v["version"] for v in ops.versions(True)] == [keep]
        print(f"\nRELIABILITY delete_under_load workers=2 codes={dict(load.codes)} ok_missing_rows=0")
    finally:
        svc.stop()
        server.stop()


def test_delete_of_a_staging_version_stops_its_publish_and_leaves_no_keys(tmp_path: Path) -> None:
    """Case 6. DELETE of a version while it is being published: the publish stops with 409 at its
    next batch, every key it wrote is removed, the other versions are untouched.

    Before: the publish answered 500 and ~250k keys stayed in Redis forever (no registry entry, so the
    janitor never saw them)."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    # GKC reaches Redis through a proxy that delays every chunk, so the 40k-item publish lasts seconds
    # however fast bulk writes get: the DELETE below always meets it midway (without the proxy a fast
    # publish could finish first and answer 201).
    proxy = LatencyProxy(server.address, delay_s=0.005)
    svc = launch_gkc(
        tmp_path / "gkc", f"redis://{proxy.addr}", GKC_PUBLISH_BATCH="50", GKC_PUBLISH_WRITERS="1"
    )
    try:
        good = publish_tagged(svc, tmp_path, [1.0])[1.0]
        body = tar_bundle(
            tagged_bundle(tmp_path / "big", 2.0, items=40_000), tmp_path / "big.tar"
        ).read_bytes()
        upload = BackgroundUpload(svc, body)
        ops = GkcOpsClient(svc.http_url, svc.token)
        staging = wait_staging(ops)
        time.sleep(0.3)  # some batches are in Redis now
        assert _keys_outside(server.url, _namespaces(ops)) == 0 < _keys_outside(server.url, {f"gkc:v{good}"})
        ops.delete(staging)
        answer = upload.result()
        assert isinstance(answer, httpx.Response) and answer.status_code == 409, answer
        assert "publish again" in answer.json()["error"]
        deadline = time.monotonic() + 30
        while any(v["version"] == staging for v in ops.versions(True)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [v["version"] for v in ops.versions(True)] == [good]
        left = _keys_outside(server.url, _namespaces(ops))
        assert left == 0, f"{left} keys of the deleted staging version are left"
        assert httpx.get(f"{svc.http_url}/healthz").status_code == 200
        print(f"\nRELIABILITY delete_staging status=409 keys_left=0 versions={[good]}")
    finally:
        svc.stop()
        proxy.close()
        server.stop()
