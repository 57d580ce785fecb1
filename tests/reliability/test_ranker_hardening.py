"""Ranker hardening (issue 11, deliver 9): a model with non-finite scores is refused at load, non-finite
JSON ids are 422, gRPC health follows model availability, a client's CANCELLED is counted and not logged,
and the reload endpoint is never left open beyond loopback or behind a placeholder token.

One real GKC (its gRPC behind a latency proxy) and one real ranker bound to 0.0.0.0 without an admin
token, as the image runs it, serving a synthetic model ``ctr`` (a symlink, flipped as a deploy would).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from bench import ranker_world
from contract import artifact as artifact_mod
from gkc.client import GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from ranker.settings import RankerSettings
from services.errors import InvalidArgument
from tests.support.faultkit import LatencyProxy
from tests.support.servers import RankerProc, launch_gkc, launch_ranker

pytestmark = [pytest.mark.reliability, pytest.mark.redis]
USERS, ITEMS, CATEGORIES = 20, 100, 5
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    root: Path
    ranker: RankerProc
    proxy: LatencyProxy
    models: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hardening")
    gkc = launch_gkc(root / "gkc")
    host, port = gkc.grpc_addr.rsplit(":", 1)
    proxy = LatencyProxy((host, int(port)))
    ranker = None
    try:
        bundle = ranker_world.make_bundle(root / "bundle", USERS, ITEMS, CATEGORIES, seed=1)
        version = int(GkcOpsClient(gkc.http_url, gkc.token).publish(bundle, progress=False)["version"])
        log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=10, seed=3)
        ranker_world.make_artifact(root / "ctr-v1", log, bundle, version, seed=3, mlp=(16, 8))
        models = root / "models"
        models.mkdir()
        (models / "ctr").symlink_to(root / "ctr-v1")
        ranker = launch_ranker(
            root / "ranker",
            models,
            proxy.addr,
            RANKER_HOST="0.0.0.0",
            RANKER_RELOAD_POLL_S="0.3",
            RANKER_GKC_TIMEOUT_S="3.0",
            RANKER_REQUEST_DEADLINE_S="5.0",
        )
        # the users' histories (issue 16: in the ranker's sequence store, no longer beside the model)
        ranker_world.fill_store(f"unix://{root / 'ranker' / 'data' / 'features' / 'redis.sock'}", log)
        yield Stack(root, ranker, proxy, models)
    finally:
        if ranker is not None:
            ranker.stop()
        proxy.close()
        gkc.stop()


def _request() -> ranker_pb2.RankRequest:
    items = np.arange(10)
    return ranker_pb2.RankRequest(
        user_id="u1",
        item_ids=[f"i{i}" for i in items],
        category_ids=[f"c{c}" for c in ranker_world.item_category(items, CATEGORIES)],
    )


def _rank(stack: Stack, timeout: float = 10.0) -> ranker_pb2.RankResponse:
    with grpc.insecure_channel(stack.ranker.grpc_addr) as channel:
        return ranker_pb2_grpc.RankerStub(channel).Rank(_request(), timeout=timeout)


def _models(stack: Stack) -> dict[str, Any]:
    return {
        m["name"]: m for m in httpx.get(f"{stack.ranker.http_url}/v1/models", timeout=10).json()["models"]
    }


def _metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.ranker.http_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(predicate: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_model_with_non_finite_scores_is_refused_and_the_old_one_keeps_serving(stack: Stack) -> None:
    """An artifact whose weights hold a NaN (and one with an infinite weight) is flipped in as ``ctr``:
    the ranker refuses it at load (ERROR log, ``reloads{result="failed"}``), the old revision keeps
    answering with the same finite scores, and a good artifact flipped in afterwards loads.

    Before: the NaN model loaded and served NaN scores (REST answered 500: NaN is not JSON)."""
    good = _rank(stack)
    revision = _models(stack)["ctr"]["revision"]
    failed_before = _metric(stack, "keep_ranker_model_reloads_total", result="failed")
    for n, poison in enumerate((float("nan"), float("inf"))):
        art = artifact_mod.load(stack.root / "ctr-v1")
        key = "over.logit.bias"  # every score goes through it
        art.state[key] = torch.full_like(art.state[key], poison)
        artifact_mod.save(art, stack.root / f"ctr-bad{n}")
        (stack.models / "ctr").unlink()
        (stack.models / "ctr").symlink_to(stack.root / f"ctr-bad{n}")
        assert _wait(
            lambda n=n: (
                _metric(stack, "keep_ranker_model_reloads_total", result="failed") >= failed_before + n + 1
            )
        ), stack.ranker.log()[-2000:]
        assert _models(stack)["ctr"]["revision"] == revision
        again = _rank(stack)
        assert list(again.scores) == list(good.scores) and np.isfinite(again.scores).all()
    assert re.search(r"ERROR.*ctr.*failed to load.*not finite", stack.ranker.log())
    (stack.models / "ctr").unlink()
    (stack.models / "ctr").symlink_to(stack.root / "ctr-v1")
    print(f"\nRELIABILITY ranker_nan_model refused=2 old_revision_kept={revision} scores_equal=True")


@pytest.mark.parametrize("spelling", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_json_ids_are_422(stack: Stack, spelling: str) -> None:
    """REST ids given as ``NaN``, ``Infinity`` or ``1e400`` (a float overflowing to inf) → 422 with a
    reason, in the user id and in a candidate.

    Before: FastAPI's validation handler echoed the NaN input and failed to encode it: 500."""
    bodies = [
        f'{{"user_id": {spelling}, "candidates": [{{"item_id": "i1", "category_id": "c1"}}]}}',
        f'{{"user_id": "u1", "candidates": [{{"item_id": {spelling}, "category_id": "c1"}}]}}',
    ]
    for body in bodies:
        got = httpx.post(
            f"{stack.ranker.http_url}/v1/rank",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert got.status_code == 422, (body, got.status_code, got.text)
        assert got.json()["error"], got.text
    assert httpx.get(f"{stack.ranker.http_url}/healthz", timeout=10).status_code == 200


def test_a_cancelled_call_is_counted_and_not_logged_as_an_error(stack: Stack) -> None:
    """The client cancels a Rank call while the ranker waits for a slow GKC: the call is counted as
    ``code="CANCELLED"`` in ``keep_ranker_requests_total``, no ERROR or traceback is logged, and the
    ranker answers the next call.

    Before: a cancelled call was counted as OK."""
    before_log = len(stack.ranker.log())
    stack.proxy.delay_s = 1.0
    try:
        with grpc.insecure_channel(stack.ranker.grpc_addr) as channel:
            future = ranker_pb2_grpc.RankerStub(channel).Rank.future(_request(), timeout=10)
            time.sleep(0.5)
            assert future.cancel()
        assert _wait(lambda: _metric(stack, "keep_ranker_requests_total", code="CANCELLED") >= 1)
    finally:
        stack.proxy.delay_s = 0.0
    time.sleep(1.5)  # the abandoned GKC call finishes or fails meanwhile
    assert len(_rank(stack).scores) == 10
    new_log = stack.ranker.log()[before_log:]
    assert "ERROR" not in new_log and "Traceback" not in new_log, new_log
    print("\nRELIABILITY ranker_cancelled counted=CANCELLED errors_logged=0")


def test_the_reload_endpoint_is_not_left_open(stack: Stack) -> None:
    """The image binds 0.0.0.0 without ``RANKER_ADMIN_TOKEN``: ``POST /v1/models/reload`` is then
    refused (401 with the reason), never open; a placeholder admin token refuses to start (as GKC's
    ``GKC_API_TOKEN``); on loopback without a token the call stays open for local use.

    Before: without a token the reload endpoint was open on every interface, and ``changeme`` was a
    valid admin token."""
    got = httpx.post(f"{stack.ranker.http_url}/v1/models/reload", timeout=10)
    assert got.status_code == 401 and "RANKER_ADMIN_TOKEN" in got.json()["error"], got.text
    dockerfile = (ROOT / "deploy" / "ranker.Dockerfile").read_text()
    assert "RANKER_HOST=0.0.0.0" in dockerfile and "RANKER_ADMIN_TOKEN" not in dockerfile
    assert not RankerSettings(host="0.0.0.0").reload_open()
    assert RankerSettings(host="127.0.0.1").reload_open()
    for placeholder in ("changeme", "secret", "short"):
        with pytest.raises(InvalidArgument, match="RANKER_ADMIN_TOKEN"):
            RankerSettings(admin_token=SecretStr(placeholder)).check()
    RankerSettings(admin_token=SecretStr("a-real-token-0123456789")).check()


def test_grpc_health_follows_model_availability(stack: Stack) -> None:
    """The only model is removed: ``/healthz`` answers 503 and gRPC health NOT_SERVING; put back, both
    SERVING again (same process).

    Before: gRPC health went SERVING when a model appeared but never back to NOT_SERVING."""

    def grpc_status() -> int:
        with grpc.insecure_channel(stack.ranker.grpc_addr) as channel:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                .status
            )

    def http_status() -> int:
        return httpx.get(f"{stack.ranker.http_url}/healthz", timeout=5).status_code

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (http_status(), grpc_status()) == (200, serving)
    (stack.models / "ctr").unlink()
    try:
        assert _wait(lambda: http_status() == 503)
        assert _wait(lambda: grpc_status() == not_serving, timeout_s=5)
    finally:
        (stack.models / "ctr").symlink_to(stack.root / "ctr-v1")
    assert _wait(lambda: http_status() == 200)
    assert _wait(lambda: grpc_status() == serving, timeout_s=5)
    print("\nRELIABILITY ranker_health no_model=503/NOT_SERVING restored=200/SERVING")
