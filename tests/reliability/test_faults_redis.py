"""Redis dies, Redis is slow, GKC is slow: GKC answers with the right status in time and recovers.

Slowness comes from :class:`faultkit.LatencyProxy` (a TCP proxy in the test that sleeps per chunk);
death is a real SIGKILL of a real redis-server with the embedded default's persistence (AOF + RDB).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import grpc
import pytest

from gkc.client import GkcClient, GkcOpsClient
from gkc.local_redis import EmbeddedRedis, RedisProcess, free_port
from protos import gkc_pb2, gkc_pb2_grpc
from services.errors import DeadlineExceeded, Unavailable
from tests.support.faultkit import ReadLoad, publish_tagged, random_request, response_tags
from tests.support.servers import launch_gkc

pytestmark = pytest.mark.reliability
CLIENT_DEADLINE_S = 3.0


def test_redis_killed_and_restarted_under_read_load(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()  # persistent, like the embedded default
    svc = None
    try:
        svc = launch_gkc(tmp_path / "gkc", redis.url, GKC_REDIS_TIMEOUT_S="0.3")
        tag_of = {v: t for t, v in publish_tagged(svc, tmp_path, [1.0, 2.0, 3.0]).items()}
        before = GkcOpsClient(svc.http_url).versions()

        def check(request: gkc_pb2.BatchGetRequest, resp: gkc_pb2.BatchGetResponse) -> None:
            assert response_tags(resp) == ({tag_of[resp.version]}, 0), resp.version

        pick = [0, *tag_of]
        with ReadLoad(svc.grpc_addr, lambda r: r.choice(pick), check, 3, CLIENT_DEADLINE_S) as load:
            assert load.wait_for("OK", 30)
            assert redis.proc is not None
            redis.proc.send_signal(signal.SIGKILL)
            redis.proc.wait()
            assert load.wait_for("UNAVAILABLE", 20)  # a sustained outage, not one blip
            ok_before_restart = load.codes["OK"]
            redis.start()  # same data dir: the AOF is replayed
            assert load.wait_for("OK", ok_before_restart + 50)  # recovered, same GKC process
        assert svc.proc.poll() is None
        assert not load.errors, load.errors[:5]
        # a call in flight at the kill may see a reset connection; no call may hang to the deadline
        assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.codes
        assert max(load.failed_latency_s) < CLIENT_DEADLINE_S
        after = GkcOpsClient(svc.http_url).versions()
        assert [v["version"] for v in after] == [v["version"] for v in before]  # versions lost: 0
        with GkcClient(svc.grpc_addr, timeout_s=5) as client:
            for version, tag in tag_of.items():
                got = client.batch_get("u1", ["i1", "i2"], ["c1", "c2"], version)
                assert set(got.items.ravel().tolist()) == {tag} and got.user_found
        failed = sorted(load.failed_latency_s)
        print(
            f"\nRELIABILITY redis_kill requests={load.total()} codes={dict(load.codes)} "
            f"unavailable_p99_ms={1000 * failed[int(0.99 * (len(failed) - 1))]:.1f} "
            f"versions_before={len(before)} versions_after={len(after)}"
        )
    finally:
        if svc is not None:
            svc.stop()
        redis.stop()


def _tcp_redis(tmp_path: Path) -> RedisProcess:
    port = free_port()
    config = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(tmp_path / "redis"),
        "appendonly": "no",
        "save": '""',
        "daemonize": "no",
    }
    return RedisProcess(tmp_path / "redis", config, ("127.0.0.1", port)).start()


def test_slow_redis_against_the_client_deadline(tmp_path: Path, latency_proxy) -> None:
    redis = _tcp_redis(tmp_path)
    svc = None
    try:
        assert isinstance(redis.address, tuple)
        proxy = latency_proxy(redis.address)
        svc = launch_gkc(
            tmp_path / "gkc",
            f"redis://{proxy.addr}",
            GKC_REDIS_TIMEOUT_S="0.3",
            GKC_REGISTRY_TTL_S="0",
        )
        version = publish_tagged(svc, tmp_path, [5.0])[5.0]
        request = random_request(random.Random(0), version)
        with grpc.insecure_channel(svc.grpc_addr) as channel:
            stub = gkc_pb2_grpc.GkcStub(channel)
            assert response_tags(stub.BatchGet(request, timeout=CLIENT_DEADLINE_S)) == ({5.0}, 0)

            proxy.delay_s = 0.05  # slower than usual, inside GKC's Redis timeout: still answers
            assert response_tags(stub.BatchGet(request, timeout=CLIENT_DEADLINE_S)) == ({5.0}, 0)

            proxy.delay_s = 1.5  # beyond GKC's Redis timeout (0.3 s)
            codes = []
            for _ in range(3):  # the server gives up on Redis and says so before the client's deadline
                with pytest.raises(grpc.RpcError) as err:
                    stub.BatchGet(request, timeout=CLIENT_DEADLINE_S)
                codes.append(err.value.code())
            assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
            with pytest.raises(DeadlineExceeded):  # a tighter client deadline wins
                GkcClient(svc.grpc_addr, timeout_s=0.1).batch_get("u1", ["i1"], ["c1"], version)

            proxy.delay_s = 0.0
            answered = None
            for _ in range(20):  # stale half-read connections are dropped; fresh ones work
                try:
                    answered = stub.BatchGet(request, timeout=CLIENT_DEADLINE_S)
                    break
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert answered is not None and response_tags(answered) == ({5.0}, 0)
    finally:
        if svc is not None:
            svc.stop()
        redis.stop()


def test_slow_gkc_against_the_client_deadline(start_gkc, tmp_path: Path, latency_proxy) -> None:
    svc = start_gkc(None)
    version = publish_tagged(svc, tmp_path, [6.0])[6.0]
    host, port = svc.grpc_addr.split(":")
    proxy = latency_proxy((host, int(port)))
    with GkcClient(proxy.addr, timeout_s=2.0) as client:
        assert set(client.batch_get("u1", ["i1"], ["c1"], version).items.ravel().tolist()) == {6.0}
        proxy.delay_s = 0.5
        with GkcClient(proxy.addr, timeout_s=0.2) as impatient, pytest.raises(DeadlineExceeded):
            impatient.batch_get("u1", ["i1"], ["c1"], version)
        proxy.delay_s = 0.0
        assert set(client.batch_get("u1", ["i2"], ["c2"], version).items.ravel().tolist()) == {6.0}
    with pytest.raises(Unavailable):  # nothing listening: UNAVAILABLE, not a hang
        GkcClient(f"127.0.0.1:{free_port()}", timeout_s=2.0).batch_get("u1", ["i1"], ["c1"])
