"""The Grafana dashboard's GKC panels query metrics the real GKC exports: ``keep serve gkc`` runs as a
subprocess (embedded Redis, free ports) and its ``/metrics`` is scraped. Metric families are declared at
start-up, so their names are there before any traffic. The ranker's names are checked the same way in
tests/e2e/test_up.py, where a trained model exists for it to serve.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gkc.settings import gkc_env
from services import launch
from tests.support.deploy_files import dashboard_exprs, exported_names, metric_names

REPO = Path(__file__).resolve().parents[2]


def _gkc_servable() -> bool:
    from trainer.commands.serve import SERVICES

    return "gkc" in SERVICES


pytestmark = pytest.mark.skipif(not _gkc_servable(), reason="`keep serve gkc` is not registered yet")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gkc_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    http_port, grpc_port = free_port(), free_port()
    env = gkc_env(
        grpc_port,
        http_port,
        "metrics-test-token-0123456789",
        data_dir=tmp_path_factory.mktemp("gkc"),
        host=None,
        base={k: v for k, v in os.environ.items() if not k.startswith("GKC_")},
    )
    log_path = tmp_path_factory.mktemp("gkc-log") / "gkc.log"
    keep = Path(sys.executable).with_name("keep")
    proc = launch.start([str(keep), "serve", "gkc"], env, log_path=log_path)
    try:
        url = f"http://127.0.0.1:{http_port}"
        launch.wait_healthy(
            proc, "keep serve gkc", f"{url}/healthz", log_path=log_path, timeout_s=60, poll_s=0.25
        )
        reply = httpx.get(f"{url}/metrics", timeout=5)
        assert reply.status_code == 200
        yield reply.text
    finally:
        launch.stop(proc)


def test_every_gkc_metric_on_the_dashboard_is_exported(gkc_metrics: str) -> None:
    queried = {
        name for expr in dashboard_exprs() for name in metric_names(expr) if name.startswith("keep_gkc_")
    }
    assert queried, "the dashboard has no GKC panel"
    exported = exported_names(gkc_metrics)
    assert queried <= exported, f"queried but not exported by GKC: {sorted(queried - exported)}"


def test_every_ranker_metric_on_the_dashboard_is_declared() -> None:
    """The ranker needs a trained model to start, so here its registry is rendered directly; the e2e test
    (tests/e2e/test_up.py) scrapes the running ranker too."""
    from prometheus_client import generate_latest

    from ranker.metrics import RankerMetrics

    queried = {n for expr in dashboard_exprs() for n in metric_names(expr) if n.startswith("keep_ranker_")}
    assert queried, "the dashboard has no ranker panel"
    exported = exported_names(generate_latest(RankerMetrics().registry).decode())
    assert queried <= exported, f"queried but not exported by the ranker: {sorted(queried - exported)}"


def test_the_dashboard_queries_only_gkc_and_ranker_metrics() -> None:
    queried = {n for expr in dashboard_exprs() for n in metric_names(expr)}
    assert {n for n in queried if not n.startswith(("keep_gkc_", "keep_ranker_"))} == set()
