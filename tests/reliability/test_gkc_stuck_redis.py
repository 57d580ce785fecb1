"""A stuck or failing Redis (issue 11, cases 7 and 12): answers come back UNAVAILABLE within the Redis
timeout, requests for healthy nodes keep their pace, health says when GKC cannot answer, and everything
recovers by itself."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.crc import key_slot

from gkc.client import GkcOpsClient, tar_bundle
from gkc.local_redis import EmbeddedRedis, LocalCluster, RedisProcess
from protos import gkc_pb2, gkc_pb2_grpc
from tests.support.faultkit import (
    CATEGORIES,
    ITEMS,
    USERS,
    BackgroundUpload,
    ReadLoad,
    UploadEnded,
    publish_tagged,
    random_request,
    response_tags,
    tagged_bundle,
    wait_staging,
)
from tests.support.servers import launch_gkc

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


@dataclass
class ClusterMap:
    """Which tagged-bundle users and items live on which master (by their keys' slots)."""

    cluster: LocalCluster
    ns: str

    def master_of(self, key: str) -> RedisProcess:
        return self.cluster.node_of_slot(key_slot(key.encode()))

    def requests_avoiding(
        self, *nodes: RedisProcess
    ) -> Callable[[random.Random, int], gkc_pb2.BatchGetRequest]:
        """Requests whose every key (user hash, items) lives on masters other than ``nodes``."""
        owners = {n.address for n in nodes}
        users = [f"u{u}" for u in range(USERS) if self.master_of(f"{self.ns}u:u{u}").address not in owners]
        items = [f"i{i}" for i in range(ITEMS) if self.master_of(f"{self.ns}i:i{i}").address not in owners]
        assert users and items

        def make(rng: random.Random, version: int) -> gkc_pb2.BatchGetRequest:
            picked = [rng.choice(items) for _ in range(20)]
            cats = [f"c{rng.randrange(CATEGORIES)}" for _ in picked]
            return gkc_pb2.BatchGetRequest(
                user_id=rng.choice(users), item_ids=picked, category_ids=cats, version=version
            )

        return make


def _kill(node: RedisProcess) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()


@pytest.mark.slow
def test_cluster_failover_under_read_load_and_during_a_publish(tmp_path: Path) -> None:
    """Case 12. A 3-master + 3-replica Redis Cluster on loopback; masters are SIGKILLed under read load:
    0 wrong answers; requests whose keys live on healthy masters keep their rate within 2x, also while
    the master holding the registry fails over (the last good registry view serves); GKC recovers
    without a restart; a publish that meets a failover is retried (201) or answered 503, never 500;
    with a master and its replica both dead, answers are UNAVAILABLE (not INTERNAL) and health says so.

    Before: while the registry's master was down 100% of requests failed; with a data-only master down
    the rate for healthy masters fell from ~1,140 to 11-72/s; a publish during the failover was a 500
    ("does not read back"); a dead master + replica gave INTERNAL (ClusterDownError matched by text)
    with both health checks green."""
    cluster = LocalCluster(3, tmp_path / "cluster", replicas=1, node_timeout_ms=2000).start()
    env = {"GKC_REDIS_CLUSTER": "true", "GKC_REDIS_TIMEOUT_S": str(TIMEOUT_S), "GKC_REGISTRY_STALE_S": "15"}
    svc = launch_gkc(tmp_path / "gkc", cluster.url, **env)
    figures: dict[str, object] = {}
    try:
        ops = GkcOpsClient(svc.http_url, svc.token)
        version = publish_tagged(svc, tmp_path, [1.0])[1.0]
        identity = ops.version(version)["identity"]
        where = ClusterMap(cluster, f"gkc:v{version}.{identity['publish_id'][:8]}:")
        registry_master = cluster.node_of_slot(key_slot(b"gkc:{reg}:state"))
        masters = [cluster.node_of_slot(s) for s in (0, 8000, 16000)]
        data_master = next(m for m in masters if m is not registry_master)

        def check(request: gkc_pb2.BatchGetRequest, resp: gkc_pb2.BatchGetResponse) -> None:
            assert response_tags(resp) == ({1.0}, 0), "a wrong or partial answer"

        def measure(load: ReadLoad, seconds: float) -> float:
            start = time.monotonic()
            time.sleep(seconds)
            return load.rate("OK", start, time.monotonic())

        def per_second(load: ReadLoad, start: float, seconds: int) -> list[int]:
            """OK answers per second from ``start``: a failure shows a stall apart from a slow machine."""
            return [round(load.rate("OK", start + k, start + k + 1)) for k in range(seconds)]

        # 1. a data-only master dies
        healthy = where.requests_avoiding(data_master)
        with (
            ReadLoad(svc.grpc_addr, lambda r: version, check, 2, 3.0, make_request=healthy) as fine,
            ReadLoad(svc.grpc_addr, lambda r: version, check, 2, 3.0) as mixed,
        ):
            assert fine.wait_for("OK", 100)
            before = measure(fine, 4)
            _kill(data_master)
            during = measure(fine, 6)
            recovered_at = time.monotonic()
            assert mixed.wait_for("OK", mixed.codes["OK"] + 200, timeout_s=30)  # every slot answers again
            figures["data_master"] = {
                "before_rps": round(before, 1),
                "during_rps": round(during, 1),
                "ok_per_s": per_second(fine, recovered_at - 10, 10),
            }
            assert during >= before / 2, figures
            # 2. the master holding the registry dies; the last good view keeps serving
            registry_healthy = where.requests_avoiding(registry_master)
            with ReadLoad(
                svc.grpc_addr, lambda r: version, check, 2, 3.0, make_request=registry_healthy
            ) as reg:
                assert reg.wait_for("OK", 100)
                before2 = measure(reg, 4)
                _kill(registry_master)
                during2 = measure(reg, 6)
                ended = time.monotonic()
            figures["registry_master"] = {
                "before_rps": round(before2, 1),
                "during_rps": round(during2, 1),
                "ok_per_s": per_second(reg, ended - 10, 10),
            }
            assert during2 >= before2 / 2, (figures, dict(reg.codes))
            assert mixed.wait_for("OK", mixed.codes["OK"] + 200, timeout_s=30)
        for load in (fine, mixed, reg):
            assert not load.errors, load.errors[:3]
            assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.codes
        figures["codes"] = dict(mixed.codes)
        figures["recovered_s"] = round(time.monotonic() - recovered_at, 1)

        # 3. a publish meets a failover: the one master that still has a replica dies mid-publish
        last = next(m for m in masters if m.alive())
        body = tar_bundle(
            tagged_bundle(tmp_path / "big", 2.0, items=30_000), tmp_path / "big.tar"
        ).read_bytes()
        # The cluster may still be settling from step 2: a publish refused before it began (503, never
        # 500) is sent again; the failover this step is about must meet a publish that is writing.
        refused: list[int] = []
        for _ in range(10):
            upload = BackgroundUpload(svc, body)
            try:
                wait_staging(ops, upload=upload)
                break
            except UploadEnded as ended:
                answer = ended.outcome
                assert isinstance(answer, httpx.Response) and answer.status_code == 503, ended
                refused.append(answer.status_code)
                time.sleep(1.0)
        else:
            raise AssertionError(f"every publish was refused before it began: {refused}")
        figures["publishes_refused_before_staging"] = len(refused)
        _kill(last)
        answer = upload.result()
        assert isinstance(answer, httpx.Response) and answer.status_code in (201, 503), answer
        figures["publish_during_failover"] = answer.status_code
        if answer.status_code == 201:
            with grpc.insecure_channel(svc.grpc_addr) as channel:
                resp = gkc_pb2_grpc.GkcStub(channel).BatchGet(
                    random_request(random.Random(0), answer.json()["version"]), timeout=5
                )
            assert response_tags(resp) == ({2.0}, 0)

        # 4. a master and its replica both dead: the cluster is down
        promoted = cluster.node_of_slot(key_slot(where.ns.encode() + b"u:u0"))
        _kill(promoted)
        killed_at = time.monotonic()
        with ReadLoad(svc.grpc_addr, lambda r: version, check, 2, 3.0) as down:
            assert down.wait_for("UNAVAILABLE", 30, timeout_s=30)
            # health follows the cluster's own verdict (cluster_state fail), which comes once the other
            # masters agree the node failed: node_timeout_ms and some gossip after the kill
            deadline = time.monotonic() + 30
            while (health := httpx.get(f"{svc.http_url}/healthz", timeout=10)).status_code != 503:
                assert time.monotonic() < deadline, health.text
                time.sleep(0.5)
            figures["cluster_down_health_503_after_s"] = round(time.monotonic() - killed_at, 1)
            time.sleep(1)
        assert "INTERNAL" not in down.codes and "UNKNOWN" not in down.codes, down.codes
        figures["cluster_down_codes"] = dict(down.codes)
        print(f"\nRELIABILITY cluster_failover {figures}")
    finally:
        svc.stop()
        cluster.stop()
