"""A real ranker process (gRPC + REST on free ports) against a real GKC and a private Redis.

The downstream model is trained through GKC exactly as ``keep train`` does, and the offline scores come
from ``trainer.evaluate.predict`` (what ``keep evaluate`` runs) through GKC for the same rows.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from bench import ranker_world
from contract import artifact as artifact_mod
from contract.log import write_log
from gkc import bundle as gkc_bundle
from gkc.client import GkcClient, GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from ranker import features
from ranker.knowledge import manifest_schema
from services import launch
from tests.support.servers import ROOT, GkcService, RankerProc, launch_gkc, launch_ranker
from trainer.evaluate import predict
from trainer.train import GkcKnowledge, TrainConfig, train

USERS, ITEMS, CATEGORIES = 30, 200, 8


def restart_gkc(old: GkcService) -> GkcService:
    """A new GKC process with the old one's settings: same ports, same Redis (so the same versions).

    (``launch_gkc`` picks new ports, and the ranker must find GKC where it was.)
    """
    log_path = old.log_path.with_suffix(".restarted.log")
    proc = launch.start([sys.executable, "-m", "gkc"], old.env, log_path=log_path, cwd=ROOT)
    svc = GkcService(old.grpc_addr, old.http_url, old.token, old.redis_url, proc, log_path, old.env)
    launch.wait_healthy(proc, "GKC", f"{svc.http_url}/healthz", log_path=log_path, timeout_s=60, poll_s=0.1)
    return svc


@dataclass
class World:
    root: Path
    log: pd.DataFrame
    version: int
    gkc: GkcService
    artifact: Path
    ranker: RankerProc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ranker-it")
    gkc = launch_gkc(root / "gkc", redis_server)
    log = pd.DataFrame(ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=25, seed=5))
    bundle = ranker_world.make_bundle(root / "bundle", USERS, ITEMS, CATEGORIES, seed=5)
    version = GkcOpsClient(gkc.http_url, gkc.token).publish(bundle, progress=False)["version"]
    with GkcClient(gkc.grpc_addr, timeout_s=10) as client:
        schema = manifest_schema(gkc_bundle.load(bundle).manifest)
        provider = GkcKnowledge(client, version, schema)
        art = train(log, TrainConfig(epochs=1, batch_size=64, progress=False, mlp=(32, 16)), [provider])
    path = artifact_mod.save(art, root / "artifacts" / "trained")
    # the README's order: backfill the ranker's embedded sequence store from the log, then start it
    log_file = write_log(log, root / "train.parquet")
    assert features.main([str(log_file), "--data-dir", str(root / "ranker" / "data")]) == 0
    models = root / "models"
    models.mkdir()
    os.symlink(path, models / "ctr")
    ranker = launch_ranker(root / "ranker", models, gkc.grpc_addr)
    world = World(root, log, version, gkc, path, ranker)
    yield world
    ranker.stop()
    world.gkc.stop()  # the one running now (a test restarts it on the same ports)


def later_rows(world: World, users: list[str], n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for user in users:
        item = rng.choice(ITEMS, n, replace=False)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": [f"i{i}" for i in item],
                    "category_id": [f"c{c}" for c in ranker_world.item_category(item, CATEGORIES)],
                    "shop_id": [f"s{i % 7}" for i in item],
                    "ts": int(world.log["ts"].max()) + 60,
                    "click": 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def request(rows: pd.DataFrame, model: str = "") -> ranker_pb2.RankRequest:
    return ranker_pb2.RankRequest(
        user_id=str(rows["user_id"].iloc[0]),
        item_ids=rows["item_id"].tolist(),
        category_ids=rows["category_id"].tolist(),
        shop_ids=rows["shop_id"].tolist(),
        model=model,
    )


def stub(world: World) -> ranker_pb2_grpc.RankerStub:
    return ranker_pb2_grpc.RankerStub(grpc.insecure_channel(world.ranker.grpc_addr))


def test_scores_equal_offline_evaluate_over_grpc_and_rest(world: World) -> None:
    rows = later_rows(world, ["u0", "u11", "u29", "new-user"])
    art = artifact_mod.load(world.artifact)
    with GkcClient(world.gkc.grpc_addr, timeout_s=10) as client:
        spec = art.knowledge["gkc"]
        expected = predict(
            art, rows, [GkcKnowledge(client, spec.version, spec.schema)], history_from=world.log
        )
    ranker = stub(world)
    for _, part in rows.groupby("user_id", sort=False):
        got = ranker.Rank(request(part), timeout=30)
        assert (got.model, got.knowledge_version, got.degraded) == ("ctr", world.version, False)
        np.testing.assert_allclose(np.array(got.scores), expected[part.index], rtol=0, atol=1e-6)
        body = {
            "user_id": str(part["user_id"].iloc[0]),
            "candidates": [
                {"item_id": i, "category_id": c, "shop_id": s}
                for i, c, s in zip(part["item_id"], part["category_id"], part["shop_id"], strict=True)
            ],
        }
        rest = httpx.post(f"{world.ranker.http_url}/v1/rank", json=body, timeout=30)
        assert rest.status_code == 200, rest.text
        assert rest.json()["scores"] == pytest.approx(list(got.scores), abs=0)
        # the same counts on both transports; the cold user has no history
        assert (got.unknown_items, got.history_len) == (
            rest.json()["unknown_items"],
            rest.json()["history_len"],
        )
        assert (got.history_len == 0) == (part["user_id"].iloc[0] == "new-user")
    unseen = ranker.Rank(
        ranker_pb2.RankRequest(
            user_id="u0",
            item_ids=["no-such-item", str(rows["item_id"].iloc[0])],
            category_ids=["c0", str(rows["category_id"].iloc[0])],
        ),
        timeout=30,
    )
    assert unseen.unknown_items == 1 and len(unseen.scores) == 2


@pytest.mark.parametrize(
    ("req", "code", "match"),
    [
        (
            ranker_pb2.RankRequest(item_ids=["i1"], category_ids=["c1"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_id",
        ),
        (ranker_pb2.RankRequest(user_id="u1"), grpc.StatusCode.INVALID_ARGUMENT, "candidate"),
        (
            ranker_pb2.RankRequest(user_id="u1", item_ids=["i1"] * 1001, category_ids=["c1"] * 1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 1000",
        ),
        (
            ranker_pb2.RankRequest(user_id="u1", item_ids=["i1"], category_ids=["c1"], model="nope"),
            grpc.StatusCode.NOT_FOUND,
            "unknown model",
        ),
    ],
)
def test_invalid_grpc_requests(
    world: World, req: ranker_pb2.RankRequest, code: grpc.StatusCode, match: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub(world).Rank(req, timeout=30)
    assert info.value.code() == code and match in info.value.details()


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"user_id": "", "candidates": [{"item_id": "i1", "category_id": "c1"}]}, 422, "user_id"),
        ({"user_id": "u1", "candidates": []}, 422, "candidate"),
        ({"user_id": "u1", "candidates": [{"item_id": "i1", "category_id": "c1"}] * 1001}, 422, "at most"),
        (
            {"user_id": "u1", "candidates": [{"item_id": "i1", "category_id": "c1"}], "model": "x"},
            404,
            "unknown",
        ),
        ({"user_id": "u1", "candidates": [{"item_id": "i1"}]}, 422, "category_id"),
    ],
)
def test_invalid_rest_requests(world: World, body: dict, status: int, match: str) -> None:
    """One body shape for every refusal, GKC's (issue 18: FastAPI's ``{"detail": [...]}`` came back for a
    malformed body and ``{"error"}`` for the others)."""
    response = httpx.post(f"{world.ranker.http_url}/v1/rank", json=body, timeout=30)
    assert response.status_code == status and match in response.text
    assert set(response.json()) == {"error", "code"}


def test_health_models_and_metrics(world: World) -> None:
    url = world.ranker.http_url
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health["models"] == ["ctr"] and health["breaker"] == "closed"
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert models["default"] == "ctr"
    assert models["models"][0]["knowledge_version"] == world.version
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for name in (
        "keep_ranker_request_seconds_bucket",
        'keep_ranker_requests_total{code="OK",method="Rank",transport="grpc"}',
        'keep_ranker_stage_seconds_count{stage="gkc"}',
        'keep_ranker_stage_seconds_count{stage="features"}',
        "keep_ranker_candidates_per_request_bucket",
        "keep_ranker_models_loaded 1.0",
        "keep_ranker_gkc_breaker_state 0.0",
    ):
        assert name in text, name
    with grpc.insecure_channel(world.ranker.grpc_addr) as channel:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_hot_swap_under_load_loses_no_request(world: World) -> None:
    """Flip the model symlink while 4 clients hammer Rank: every call answers, each from one model."""
    other = ranker_world.make_artifact(
        world.root / "artifacts" / "other",
        ranker_world.make_log(USERS, ITEMS, CATEGORIES, seed=5),
        None,
        0,
        seed=9,
    )
    rows = later_rows(world, ["u3"], n=50, seed=3)
    req = request(rows)
    results: list[tuple[float, str, tuple[float, ...]]] = []  # (monotonic start, revision, scores)
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        ranker = stub(world)
        while not stop.is_set():
            try:
                started = time.monotonic()
                got = ranker.Rank(req, timeout=30)
                results.append((started, got.model_revision, tuple(got.scores)))
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    models = world.root / "models"
    try:
        while len(results) < 20:
            time.sleep(0.05)
        os.symlink(other, models / ".ctr.new")
        os.replace(models / ".ctr.new", models / "ctr")
        reload = httpx.post(f"{world.ranker.http_url}/v1/models/reload", timeout=60).json()
        assert "ctr" in reload["loaded"] or "ctr" in reload["unchanged"]  # the poller may have won
        swapped_at = time.monotonic()
        while sum(1 for started, _, _ in results if started > swapped_at) < 20:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
        os.symlink(world.artifact, models / ".ctr.new")
        os.replace(models / ".ctr.new", models / "ctr")
        httpx.post(f"{world.ranker.http_url}/v1/models/reload", timeout=60)
    assert errors == []
    by_revision: dict[str, set[tuple[float, ...]]] = {}
    for _, revision, scores in results:
        by_revision.setdefault(revision, set()).add(scores)
    assert len(by_revision) == 2, list(by_revision)
    assert all(len(s) == 1 for s in by_revision.values())  # one snapshot end to end: never a mix
    # Requests in flight during the swap may finish on either model; every request that began after
    # the reload call returned must see the new one.
    after = {revision for started, revision, _ in results if started > swapped_at}
    assert after == set(by_revision) - {results[0][1]}, after


def test_gkc_stopped_mid_test_degrades_then_recovers(world: World) -> None:
    """Stops the module's GKC, then starts a new one on the same ports and Redis (also when the test
    fails midway), so the tests after it meet a healthy GKC again."""
    rows = later_rows(world, ["u5"], n=40, seed=4)
    ranker = stub(world)
    healthy = ranker.Rank(request(rows), timeout=30)
    assert not healthy.degraded
    world.gkc.stop()
    try:
        reasons = []
        for _ in range(8):
            # the deadline is the server's budget (RANKER_REQUEST_DEADLINE_S) plus slack: answering
            # later than that would be DEADLINE_EXCEEDED here, not a degraded answer
            got = ranker.Rank(request(rows), timeout=6)
            assert got.degraded and len(got.scores) == len(rows)
            assert got.knowledge_version == world.version
            reasons.append(got.degraded_reason)
        assert set(reasons) <= {"gkc_unavailable", "gkc_timeout", "breaker_open"}
        assert "breaker_open" in reasons  # after 3 failures the breaker stops calling
        assert not np.allclose(got.scores, healthy.scores, atol=1e-5)  # the base model, not the plugged one
        metrics = httpx.get(f"{world.ranker.http_url}/metrics", timeout=10).text
        assert 'keep_ranker_degraded_total{model="ctr",reason="breaker_open"}' in metrics
    finally:
        world.gkc = restart_gkc(world.gkc)
    for _ in range(200):  # the breaker probes again every 0.3 s; the channel reconnects within ~1 s
        got = ranker.Rank(request(rows), timeout=30)
        if not got.degraded:
            break
        time.sleep(0.1)
    assert not got.degraded, world.ranker.log()[-2000:]
    np.testing.assert_allclose(np.array(got.scores), np.array(healthy.scores), rtol=0, atol=1e-6)
    assert httpx.get(f"{world.ranker.http_url}/healthz", timeout=10).json()["breaker"] == "closed"
