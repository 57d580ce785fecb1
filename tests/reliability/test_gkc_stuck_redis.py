"""A stuck or failing Redis (issue 11, cases 7 and 12): answers come back UNAVAILABLE within the Redis
timeout, requests for healthy nodes keep their pace, health says when GKC cannot answer, and everything
recovers by itself."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from faultkit import ReadLoad, launch_gkc, publish_tagged, response_tags
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gkc.local_redis import EmbeddedRedis
from protos import gkc_pb2

pytestmark = pytest.mark.reliability
TIMEOUT_S = 0.5
#: What an answer may take beyond GKC_REDIS_TIMEOUT_S on this shared 2-core machine.
MARGIN_S = 1.0


@dataclass
class HealthWatch:
    """Polls gRPC health and ``/healthz`` every ``period_s``; records (time, grpc status, http code)."""

    grpc_addr: str
    http_url: str
    period_s: float = 0.2
    seen: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> HealthWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with grpc.insecure_channel(self.grpc_addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        stub.Check(health_pb2.HealthCheckRequest(service="keep.gkc.v1.Gkc"), timeout=2).status
                    )
                except grpc.RpcError as err:
                    status = err.code().name
                try:
                    code = httpx.get(f"{self.http_url}/healthz", timeout=3).status_code
                except httpx.TransportError:
                    code = 0
                self.seen.append((time.monotonic(), status, code))
                self._stop.wait(self.period_s)

    def between(self, start: float, end: float) -> Counter[tuple[str, int]]:
        return Counter((s, c) for t, s, c in self.seen if start <= t <= end)


def test_a_stopped_redis_gives_unavailable_within_the_timeout_and_health_follows(tmp_path: Path) -> None:
    """Case 7. Redis SIGSTOPped for 10 s under read load: every answer is OK or UNAVAILABLE, the
    UNAVAILABLE ones within GKC_REDIS_TIMEOUT_S + margin (no DEADLINE_EXCEEDED at a 3 s deadline),
    gRPC health goes NOT_SERVING and ``/healthz`` 503 while Redis is stopped, and both come back after
    SIGCONT with OK answers, without a restart.

    Before: 18 answers in 10 s, 16 of them DEADLINE_EXCEEDED; the UNAVAILABLE ones took 2 s, and gRPC
    health stayed SERVING (blocking Redis calls ran on the event loop, requests queued behind them)."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    svc = launch_gkc(tmp_path / "gkc", server.url, GKC_REDIS_TIMEOUT_S=str(TIMEOUT_S))
    try:
        tag_of = {v: t for t, v in publish_tagged(svc, tmp_path, [1.0]).items()}

        def check(request: gkc_pb2.BatchGetRequest, resp: gkc_pb2.BatchGetResponse) -> None:
            assert response_tags(resp) == ({tag_of[resp.version]}, 0)

        assert server.proc is not None
        with (
            HealthWatch(svc.grpc_addr, svc.http_url) as watch,
            ReadLoad(svc.grpc_addr, lambda r: 0, check, threads=3, timeout_s=3.0) as load,
        ):
            assert load.wait_for("OK", 50)
            codes_before = Counter(load.codes)
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGSTOP)
            time.sleep(10)
            during = Counter(load.codes) - codes_before
            server.proc.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            assert load.wait_for("OK", load.codes["OK"] + 50, timeout_s=20)  # recovered by itself
            time.sleep(1.5)
        assert not load.errors, load.errors[:3]
        assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.codes
        slowest = max(load.failed_latency_s)
        assert slowest < TIMEOUT_S + MARGIN_S, f"an UNAVAILABLE took {slowest:.2f} s"
        assert during["UNAVAILABLE"] >= 30, during  # answered all along, not queued
        assert watch.between(stopped + 2, resumed)[("NOT_SERVING", 503)] >= 3, watch.seen
        assert watch.seen[-1][1:] == ("SERVING", 200), watch.seen[-5:]
        health = dict(watch.between(stopped + 2, resumed))
        print(f"\nRELIABILITY redis_sigstop during={dict(during)} slowest_s={slowest:.2f} health={health}")
    finally:
        if server.proc is not None and server.alive():
            server.proc.send_signal(signal.SIGCONT)
        svc.stop()
        server.stop()
