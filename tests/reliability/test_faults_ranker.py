"""The ranker under GKC and Redis faults: every Rank answers (degraded) within its deadline, then recovers.

One real stack for the module: a persistent private Redis, a real GKC on it, a :class:`LatencyProxy` in
front of GKC's gRPC port, and a real ranker (``python -m ranker``) that reaches GKC only through the proxy,
serving a ``bench.ranker_world`` model pinned to the published knowledge version.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import grpc
import numpy as np
import pytest

from bench import ranker_world
from gkc.client import GkcOpsClient
from gkc.local_redis import EmbeddedRedis, RedisProcess
from protos import ranker_pb2, ranker_pb2_grpc
from tests.support.faultkit import BackgroundCallers, LatencyProxy
from tests.support.servers import GkcService, RankerProc, launch_gkc, launch_ranker

pytestmark = pytest.mark.reliability

USERS, ITEMS, CATEGORIES = 20, 100, 5
GKC_TIMEOUT_S = 0.5  # generous: 2 shared cores; a healthy call must not time out
DEADLINE_S = 1.0  # RANKER_REQUEST_DEADLINE_S
MARGIN_S = 1.0  # scheduling slack on a shared machine; an answer past deadline + margin is a bug
CLIENT_TIMEOUT_S = DEADLINE_S + 3.0


@dataclass
class Stack:
    redis: RedisProcess
    gkc: GkcService
    proxy: LatencyProxy
    ranker: RankerProc
    version: int

    @property
    def ranker_addr(self) -> str:
        return self.ranker.grpc_addr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ranker-faults")
    redis = EmbeddedRedis(root / "redis").start()  # persistent: a restart replays the AOF
    gkc = launch_gkc(root / "gkc", redis.url, GKC_REDIS_TIMEOUT_S="0.3")
    ranker = None
    proxy = None
    try:
        bundle = ranker_world.make_bundle(root / "bundle", USERS, ITEMS, CATEGORIES, seed=3)
        version = int(GkcOpsClient(gkc.http_url, gkc.token).publish(bundle, progress=False)["version"])
        log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=10, seed=3)
        models = root / "models"
        ranker_world.make_artifact(models / "ctr", log, bundle, version, seed=3, mlp=(32, 16))
        host, port = gkc.grpc_addr.split(":")
        proxy = LatencyProxy((host, int(port)))
        ranker = launch_ranker(
            root / "ranker",
            models,
            proxy.addr,
            RANKER_GKC_TIMEOUT_S=str(GKC_TIMEOUT_S),
            RANKER_REQUEST_DEADLINE_S=str(DEADLINE_S),
            RANKER_RELOAD_POLL_S="5",
        )
        yield Stack(redis, gkc, proxy, ranker, version)
    finally:
        if ranker is not None:
            ranker.stop()
        if proxy is not None:
            proxy.close()
        gkc.stop()
        redis.stop()


def _request(user: int = 1, n: int = 30) -> ranker_pb2.RankRequest:
    items = [(user * 7 + k * 3) % ITEMS for k in range(n)]
    return ranker_pb2.RankRequest(
        user_id=f"u{user}",
        item_ids=[f"i{i}" for i in items],
        category_ids=[f"c{c}" for c in ranker_world.item_category(np.array(items), CATEGORIES)],
        shop_ids=[f"s{i % 7}" for i in items],
    )


@dataclass
class RankLoad(BackgroundCallers):
    """``threads`` clients calling Rank with a client timeout past the server's deadline; counts all."""

    join_s: ClassVar[float] = CLIENT_TIMEOUT_S + 5

    addr: str
    threads: int = 2
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    max_latency_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def reset(self) -> None:
        with self._lock:
            self.requests, self.max_latency_s = 0, 0.0
            self.errors.clear()
            self.degraded.clear()

    def snapshot(self) -> tuple[int, int, int]:
        """(requests, degraded, errors) so far."""
        with self._lock:
            return self.requests, sum(self.degraded.values()), sum(self.errors.values())

    def wait(self, predicate: Callable[[int, int, int], bool], timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(*self.snapshot()):
                return True
            time.sleep(0.05)
        return False

    def _run(self, seed: int) -> None:
        with grpc.insecure_channel(self.addr) as channel:
            rank = ranker_pb2_grpc.RankerStub(channel).Rank
            while not self._stop.is_set():
                request = _request(user=seed + 1)
                start = time.perf_counter()
                try:
                    got = rank(request, timeout=CLIENT_TIMEOUT_S)
                    err = None
                    if len(got.scores) != len(request.item_ids):
                        err = "wrong_length"
                except grpc.RpcError as rpc_err:
                    got, err = None, rpc_err.code().name
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.requests += 1
                    self.max_latency_s = max(self.max_latency_s, elapsed)
                    if err is not None:
                        self.errors[err] += 1
                    elif got is not None and got.degraded:
                        self.degraded[got.degraded_reason] += 1


def _healthy(stack: Stack, timeout_s: float = 20.0) -> ranker_pb2.RankResponse:
    """Rank until a non-degraded answer (the breaker probes every 0.3 s); fails after ``timeout_s``."""
    with grpc.insecure_channel(stack.ranker_addr) as channel:
        rank = ranker_pb2_grpc.RankerStub(channel).Rank
        deadline = time.monotonic() + timeout_s
        got = rank(_request(), timeout=CLIENT_TIMEOUT_S)
        while got.degraded and time.monotonic() < deadline:
            time.sleep(0.1)
            got = rank(_request(), timeout=CLIENT_TIMEOUT_S)
    assert not got.degraded, stack.ranker.log()[-2000:]
    return got


def test_slow_gkc_answers_degraded_within_the_deadline(stack: Stack) -> None:
    healthy = _healthy(stack)
    assert healthy.knowledge_version == stack.version
    stack.proxy.delay_s = 3 * GKC_TIMEOUT_S  # every GKC chunk now arrives after the GKC timeout
    with RankLoad(stack.ranker_addr) as load:
        # the first calls time out on GKC, then the breaker opens and its half-open probes time out too
        assert load.wait(lambda r, d, e: r >= 30 and load.degraded["gkc_timeout"] >= 5)
        slow_requests, slow_degraded, slow_errors = load.snapshot()
        slow_reasons, slow_max = dict(load.degraded), load.max_latency_s
    stack.proxy.delay_s = 0.0
    assert slow_errors == 0, load.errors
    assert slow_degraded == slow_requests  # every answer from the base model, none lost
    assert set(slow_reasons) <= {"gkc_timeout", "breaker_open", "deadline", "gkc_unavailable"}
    assert slow_max < DEADLINE_S + MARGIN_S  # the deadline logic cuts GKC off; not a speed target
    recovered = _healthy(stack)
    assert list(recovered.scores) == list(healthy.scores)
    print(
        f"\nRELIABILITY ranker_slow_gkc requests={slow_requests} errors={slow_errors} "
        f"degraded={slow_degraded} reasons={slow_reasons} max_latency_ms={1000 * slow_max:.0f} "
        f"deadline_ms={1000 * DEADLINE_S:.0f}"
    )


def test_redis_killed_under_ranker_load_degrades_then_recovers(stack: Stack) -> None:
    healthy = _healthy(stack)
    with RankLoad(stack.ranker_addr) as load:
        assert load.wait(lambda r, d, e: r >= 10)
        assert stack.redis.proc is not None
        stack.redis.proc.send_signal(signal.SIGKILL)
        stack.redis.proc.wait()
        assert load.wait(lambda r, d, e: d >= 10)  # a sustained outage, answered degraded
        during = load.snapshot()
        stack.redis.start()  # same data dir: the AOF brings the published version back
        recovered = _healthy(stack)
        assert load.wait(lambda r, d, e: r >= during[0] + 10)
        requests, degraded, errors = load.snapshot()
        reasons, max_latency = dict(load.degraded), load.max_latency_s
    assert stack.gkc.proc.poll() is None
    assert errors == 0, load.errors
    assert degraded >= 10 and degraded < requests
    assert set(reasons) <= {"gkc_unavailable", "gkc_timeout", "breaker_open", "deadline"}
    assert max_latency < DEADLINE_S + MARGIN_S
    assert list(recovered.scores) == list(healthy.scores)  # knowledge again, without a restart
    print(
        f"\nRELIABILITY ranker_redis_kill requests={requests} errors={errors} degraded={degraded} "
        f"reasons={reasons} max_latency_ms={1000 * max_latency:.0f}"
    )
