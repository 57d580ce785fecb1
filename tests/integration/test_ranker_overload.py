"""Back-pressure over the real transports: a ranker process whose one admission slot is held by a request
waiting on a slow GKC refuses the next request at once, gRPC ``RESOURCE_EXHAUSTED`` and REST 503 with
``Retry-After``, and serves again as soon as the slot is free.

The slow GKC is a fault, so it is a fake: a gRPC ``Gkc`` service in this process whose ``BatchGet``
blocks until the test lets it go and then answers UNAVAILABLE (the ranker degrades that one request).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
import httpx
import pytest

from bench import ranker_world as synthetic
from gkc.local_redis import free_port
from protos import gkc_pb2_grpc, ranker_pb2, ranker_pb2_grpc
from tests.support.servers import launch_ranker


class StuckGkc(gkc_pb2_grpc.GkcServicer):
    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()

    def BatchGet(self, request: object, context: grpc.ServicerContext) -> NoReturn:
        self.called.set()
        self.release.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "a slow GKC (test fault)")
        raise AssertionError("abort raises")


@pytest.fixture
def stuck_gkc() -> Iterator[tuple[str, StuckGkc]]:
    servicer = StuckGkc()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    gkc_pb2_grpc.add_GkcServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        servicer.release.set()
        server.stop(0)


def test_a_full_ranker_refuses_at_once_and_recovers(tmp_path: Path, stuck_gkc: tuple[str, StuckGkc]) -> None:
    addr, gkc = stuck_gkc
    log = synthetic.make_log(users=10, items=100, categories=5, rows_per_user=20)
    bundle = synthetic.make_bundle(tmp_path / "bundle", users=10, items=100, categories=5, dim=8, uc_dim=4)
    synthetic.make_artifact(tmp_path / "models" / "ctr", log, bundle, 1)
    ranker = launch_ranker(
        tmp_path / "ranker",
        tmp_path / "models",
        addr,
        RANKER_MAX_IN_FLIGHT="1",
        RANKER_MAX_QUEUE="0",
        RANKER_GKC_TIMEOUT_S="20",
        RANKER_REQUEST_DEADLINE_S="25",
        RANKER_BREAKER_FAILURES="100",
    )
    try:
        items = [f"i{i}" for i in range(10)]
        cats = [f"c{i % 5}" for i in range(10)]
        req = ranker_pb2.RankRequest(user_id="u1", item_ids=items, category_ids=cats)
        cands = [{"item_id": i, "category_id": c} for i, c in zip(items, cats, strict=True)]
        body = {"user_id": "u1", "candidates": cands}
        with grpc.insecure_channel(ranker.grpc_addr) as channel:
            rank = ranker_pb2_grpc.RankerStub(channel).Rank
            holder = rank.future(req, timeout=60)  # takes the one slot, waits on the stuck GKC
            assert gkc.called.wait(30), "the first request never reached GKC"

            with pytest.raises(grpc.RpcError) as refused:
                rank(req, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at capacity" in (refused.value.details() or "")

            reply = httpx.post(f"{ranker.http_url}/v1/rank", json=body, timeout=10)
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "1"
            assert reply.json()["code"] == "RESOURCE_EXHAUSTED"

            gkc.release.set()
            first = holder.result(timeout=60)
            assert first.degraded and first.degraded_reason.startswith("gkc_unavailable")
            again = rank(req, timeout=60)  # the slot is free again (GKC still answers UNAVAILABLE)
            assert len(again.scores) == len(items)
        metrics = httpx.get(f"{ranker.http_url}/metrics", timeout=10).text
        refusals = [line for line in metrics.splitlines() if 'code="RESOURCE_EXHAUSTED"' in line]
        assert any("keep_ranker_requests_total" in line and 'transport="grpc"' in line for line in refusals)
    finally:
        ranker.stop()
