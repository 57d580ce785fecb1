"""``make up`` end to end: ``deploy/up.py`` brings the suite up as local processes on free ports (private
Redis, GKC, the one-shot knowledge job, the ranker), a request is ranked through the ranker's REST front, both
services' ``/metrics`` carry every metric the Grafana dashboard queries, and SIGTERM stops everything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.deploy_files import dashboard_exprs, exported_names, metric_names

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "deploy" / "up.py"

#: Generous: the tiny pipeline (synth, pretrain, export, publish, train) on 2 shared cores.
READY_TIMEOUT_S = 900


def missing_pieces() -> list[str]:
    """What the suite needs from other modules that is not there yet (the test is skipped until it is)."""
    from trainer.cli import build_parser
    from trainer.commands.serve import SERVICES

    missing = [f"`keep serve {s}`" for s in ("gkc", "ranker") if s not in SERVICES]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(getattr(sub, "choices", {}) or {})
    needed = ("data", "pretrain", "export", "publish", "train")
    missing += [f"`keep {c}`" for c in needed if c not in commands]
    return missing


MISSING = missing_pieces()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"make up needs {', '.join(MISSING)} (not implemented yet)"),
]


class Suite:
    """A running ``deploy/up.py``: its output lines, its ready endpoints, and a way to stop it."""

    def __init__(self, work_dir: Path, token: str, *extra: str) -> None:
        self.work_dir = work_dir
        self.token = token
        self.endpoints: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GKC_", "RANKER_", "KEEP_"))}
        env["GKC_API_TOKEN"] = token
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(UP),
                "--free-ports",
                "--work-dir",
                str(work_dir),
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so a failed test can still clean up everything
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.log.append(line)
            if line.startswith("keep-up: ready "):
                endpoints: dict[str, Any] = json.loads(line.removeprefix("keep-up: ready "))
                return endpoints
        tail = "\n".join(self.log[-60:])
        raise AssertionError(f"make up did not get ready (exit {self.proc.poll()}):\n{tail}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            # Whatever is left of the group (nothing, when the supervisor did its job).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return code


def port_open(url_or_addr: str) -> bool:
    hostport = url_or_addr.split("//")[-1].split("/")[0]
    host, _, port = hostport.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def some_request(work_dir: Path) -> dict[str, Any]:
    """A user and candidates from the synthetic test log the job generated."""
    import pandas as pd

    (test_file,) = sorted((work_dir / "trainer").glob("run-*/data/test.parquet"))
    log = pd.read_parquet(test_file)
    user = log["user_id"].iloc[0]
    rows = log[log["user_id"] == user].head(20)
    if len(rows) < 5:
        rows = pd.concat([rows, log.head(20)]).head(20)
    return {
        "user_id": str(user),
        "candidates": [
            {"item_id": str(r.item_id), "category_id": str(r.category_id)}
            for r in rows.itertuples(index=False)
        ],
    }


@pytest.fixture(scope="module", params=["single-redis", "redis-cluster"])
def suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The whole suite, on one Redis and on a 3-master Redis Cluster (``make up UP_ARGS=--cluster``)."""
    work_dir = tmp_path_factory.mktemp("up")
    token = secrets.token_hex(16)
    running = Suite(work_dir, token, *(["--cluster"] if request.param == "redis-cluster" else []))
    try:
        running.endpoints = running.wait_ready(READY_TIMEOUT_S)
        yield running
    finally:
        running.stop()


def test_suite_ranks_a_request_through_the_ranker(suite: Suite) -> None:
    endpoints, work_dir = suite.endpoints, suite.work_dir
    request = some_request(work_dir)
    reply = httpx.post(f"{endpoints['ranker_http']}/v1/rank", json=request, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    scores = body["scores"]
    assert len(scores) == len(request["candidates"])
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
    assert body["degraded"] is False, "GKC is up: the ranker must use the knowledge"


def test_the_model_serves_the_published_knowledge_version(
    suite: Suite,
) -> None:
    endpoints, token = suite.endpoints, suite.token
    reply = httpx.get(f"{endpoints['gkc_http']}/v1/versions", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    listing = reply.json()
    versions = listing["versions"] if isinstance(listing, dict) else listing
    ready = {int(v["version"]) for v in versions if v.get("state") == "ready"}
    assert ready, versions
    model = Path(endpoints["model_dir"]).resolve()
    assert model.name.startswith("model-v")
    assert int(model.name.removeprefix("model-v").split("-")[0]) in ready


def test_a_recorded_click_reaches_the_next_rank(suite: Suite) -> None:
    """The sequence store is wired: an event recorded with the suite's events token (``make up`` gives the
    ranker its token unless ``RANKER_EVENTS_TOKEN`` is set) is in the user's history at the next rank."""
    endpoints = suite.endpoints
    request = some_request(suite.work_dir)
    rank_url = f"{endpoints['ranker_http']}/v1/rank"
    before = httpx.post(rank_url, json=request, timeout=30).json()
    first = request["candidates"][0]
    event = {"event_id": f"e2e-{secrets.token_hex(8)}", "user_id": request["user_id"], **first}
    headers = {"authorization": f"Bearer {suite.token}"}
    url = f"{endpoints['ranker_http']}/v1/events"
    assert httpx.post(url, json={"events": [event]}, timeout=30).status_code == 401, "ingest needs the token"
    reply = httpx.post(url, json={"events": [event]}, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"received": 1, "recorded": 1}
    after = httpx.post(rank_url, json=request, timeout=30).json()
    assert not after["degraded"], after["degraded_reason"]
    assert after["history_len"] == before["history_len"] + 1 or before["history_len"] >= 20, (before, after)
    assert after["scores"] != before["scores"]


def test_every_dashboard_metric_is_exported(suite: Suite) -> None:
    endpoints, work_dir = suite.endpoints, suite.work_dir
    httpx.post(f"{endpoints['ranker_http']}/v1/rank", json=some_request(work_dir), timeout=30)
    exported: set[str] = set()
    for service in ("gkc_http", "ranker_http"):
        reply = httpx.get(f"{endpoints[service]}/metrics", timeout=10)
        assert reply.status_code == 200
        exported |= exported_names(reply.text)
    queried = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"


def test_sigterm_stops_every_service(suite: Suite) -> None:
    running, endpoints = suite, suite.endpoints
    assert running.stop() == 0, "\n".join(running.log[-40:])
    assert any(line.endswith("all services stopped") for line in running.log)
    for key in ("gkc_http", "gkc_grpc", "ranker_http", "ranker_grpc"):
        assert not port_open(endpoints[key]), f"{key} still listening after make up stopped"
