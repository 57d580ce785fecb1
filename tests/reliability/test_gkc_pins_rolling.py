"""Consumer pins (issue 11, case 13): several models pinned to different versions keep reading their own
knowledge however many versions are published after them; when their ranker dies, the pins end and the
versions retire."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from bench import ranker_world
from gkc.client import GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from tests.support.servers import launch_gkc, launch_ranker

pytestmark = pytest.mark.reliability
USERS, ITEMS, CATEGORIES = 20, 100, 5
MODELS = ("ctr", "cvr", "cart")


def _request(model: str, user: int) -> ranker_pb2.RankRequest:
    items = [(user * 7 + k * 3) % ITEMS for k in range(20)]
    return ranker_pb2.RankRequest(
        user_id=f"u{user}",
        item_ids=[f"i{i}" for i in items],
        category_ids=[f"c{c}" for c in ranker_world.item_category(np.array(items), CATEGORIES)],
        model=model,
    )


class ModelLoad:
    """Two threads calling Rank for every model in turn; counts answers and degraded reasons."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.answers: Counter[str] = Counter()
        self.degraded: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(2)]

    def __enter__(self) -> ModelLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _run(self, seed: int) -> None:
        with grpc.insecure_channel(self.addr) as channel:
            rank = ranker_pb2_grpc.RankerStub(channel).Rank
            n = seed
            while not self._stop.is_set():
                model = MODELS[n % len(MODELS)]
                n += 1
                try:
                    got = rank(_request(model, 1 + n % USERS), timeout=10)
                except grpc.RpcError as err:
                    with self._lock:
                        self.errors[err.code().name] += 1
                    continue
                with self._lock:
                    self.answers[model] += 1
                    if got.degraded:
                        self.degraded[f"{model}:{got.degraded_reason}"] += 1


@pytest.mark.slow
def test_three_models_pinned_to_three_versions_survive_five_publishes(tmp_path: Path) -> None:
    """Case 13. Three models (ctr, cvr, cart) pinned to versions 1, 2 and 3 through their ranker's
    leases; five more versions are published under Rank load with ``GKC_MAX_READY_VERSIONS=5``: 0
    degraded answers, 0 pinned versions retired, the leases listed per version. The ranker is killed:
    its pins end after ``RANKER_PIN_TTL_S`` and the next publishes retire those versions.

    Before: retirement took the oldest non-active version, so the 6th publish retired a version a model
    still read and that model silently degraded."""
    gkc = launch_gkc(tmp_path / "gkc", None, GKC_MAX_READY_VERSIONS="5")
    ranker = None
    try:
        ops = GkcOpsClient(gkc.http_url, gkc.token)
        log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=10, seed=3)
        versions: list[int] = []
        for seed in range(8):
            bundle = ranker_world.make_bundle(tmp_path / f"bundle{seed}", USERS, ITEMS, CATEGORIES, seed=seed)
            if seed == 3:  # the models come first, on versions 1-3; the five later publishes under load
                ranker = launch_ranker(
                    tmp_path / "ranker",
                    tmp_path / "models",
                    gkc.grpc_addr,
                    RANKER_GKC_API_URL=gkc.http_url,
                    RANKER_GKC_API_TOKEN=gkc.token,
                    RANKER_PIN_TTL_S="3",
                    RANKER_RELOAD_POLL_S="0.5",
                )
                for model, version in zip(MODELS, versions, strict=True):
                    assert _pinned(ops, version, model), ops.version(version)
                load = ModelLoad(ranker.grpc_addr).__enter__()
            versions.append(int(ops.publish(bundle, progress=False)["version"]))
            if seed < 3:
                art = tmp_path / "models" / MODELS[seed]
                ranker_world.make_artifact(art, log, bundle, versions[-1], seed=seed, mlp=(16, 8))
        time.sleep(1.0)
        load.__exit__()
        ready = [v["version"] for v in ops.versions()]
        assert set(versions[:3]) <= set(ready), ready  # 0 pinned versions retired
        assert len(ready) == 5
        assert not load.errors and not load.degraded, (load.errors, load.degraded)
        assert all(load.answers[m] > 10 for m in MODELS), load.answers
        figures = {"answers": dict(load.answers), "degraded": 0, "ready": ready}

        assert ranker is not None
        ranker.proc.send_signal(signal.SIGKILL)  # no goodbye: the pins must end by themselves
        ranker.proc.wait()
        deadline = time.monotonic() + 20
        while any(ops.version(v)["pins"] for v in versions[:3]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(ops.version(v)["pins"] for v in versions[:3])  # the pins ended with their holder
        for seed in (8, 9):
            bundle = ranker_world.make_bundle(tmp_path / f"bundle{seed}", USERS, ITEMS, CATEGORIES, seed=seed)
            ops.publish(bundle, progress=False)
        after = [v["version"] for v in ops.versions()]
        assert versions[1] not in after and versions[2] not in after, after  # retired once unpinned
        assert versions[0] in after  # still the active one
        figures["after_ranker_died"] = after
        print(f"\nRELIABILITY pins_rolling {figures}")
    finally:
        if ranker is not None:
            ranker.stop()
            _shutdown_orphans(tmp_path / "ranker")
        gkc.stop()


def _shutdown_orphans(root: Path) -> None:
    """The SIGKILLed ranker's embedded feature store outlives it (a restarted ranker reuses it): shut it
    down here, or every run of this test leaves a redis-server behind."""
    for sock in root.rglob("redis.sock"):
        with contextlib.suppress(redis.RedisError, OSError):
            redis.Redis(unix_socket_path=str(sock), socket_timeout=5).shutdown(nosave=True)


def _pinned(ops: GkcOpsClient, version: int, model: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p["holder"].endswith(f":{model}") for p in ops.version(version)["pins"]):
            return True
        time.sleep(0.2)
    return False
