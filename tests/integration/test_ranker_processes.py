"""``RANKER_GRPC_PROCESSES=2``: a second serving process on the same gRPC port (SO_REUSEPORT) answers
calls with knowledge from a real GKC, ``/metrics`` counts the calls of both processes, and stopping the
ranker stops both; a serving process killed from outside is started again, and ``POST
/v1/models/reload`` answers once every process has reloaded."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

from bench import procfs, ranker_world
from gkc.client import GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from tests.support.servers import launch_gkc, launch_ranker

USERS, ITEMS, CATEGORIES = 20, 200, 8


def test_two_processes_serve_one_port_and_metrics_count_both(tmp_path: Path, redis_server: str) -> None:
    gkc = launch_gkc(tmp_path / "gkc", redis_server)
    try:
        log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=20, seed=3)
        bundle = ranker_world.make_bundle(tmp_path / "bundle", USERS, ITEMS, CATEGORIES, dim=8, uc_dim=4)
        version = int(GkcOpsClient(gkc.http_url, gkc.token).publish(bundle, progress=False)["version"])
        ranker_world.make_artifact(tmp_path / "models" / "ctr", log, bundle, version)
        ranker = launch_ranker(
            tmp_path / "ranker", tmp_path / "models", gkc.grpc_addr, RANKER_GRPC_PROCESSES="2"
        )
        try:
            deadline = time.monotonic() + 60
            while "ranker gRPC process 1 serving" not in ranker.log():
                assert time.monotonic() < deadline, "no second serving process:\n" + ranker.log()[-2000:]
                time.sleep(0.2)
            workers = [c for c in procfs.children(ranker.proc.pid) if "spawn_main" in procfs.cmdline(c)]
            assert len(workers) == 1, [procfs.cmdline(c) for c in procfs.children(ranker.proc.pid)]
            before = {pid: procfs.cpu_ticks(pid) for pid in workers}
            items = [f"i{i}" for i in range(0, ITEMS, 2)]
            cats = [f"c{c}" for c in ranker_world.item_category(np.arange(0, ITEMS, 2), CATEGORIES)]
            req = ranker_pb2.RankRequest(user_id="u3", item_ids=items, category_ids=cats)
            sent = 0
            # many connections (each channel its own): the kernel spreads them over the two processes
            channels = [
                grpc.insecure_channel(ranker.grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(12)
            ]
            try:
                for _ in range(3):
                    for channel in channels:
                        reply = ranker_pb2_grpc.RankerStub(channel).Rank(req, timeout=30)
                        assert not reply.degraded and len(reply.scores) == len(items)
                        sent += 1
            finally:
                for channel in channels:
                    channel.close()
            spent = {pid: procfs.cpu_ticks(pid) - before[pid] for pid in workers}
            assert max(spent.values()) > 0, f"the second process served nothing: {spent}"
            text = httpx.get(f"{ranker.http_url}/metrics", timeout=10).text
            counted = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("keep_ranker_requests_total{")
                and 'method="Rank"' in line
                and 'code="OK"' in line
            )
            assert counted == sent  # both processes' calls, summed
            loaded = re.findall(r'keep_ranker_models_loaded\{pid="\d+"\} 1\.0', text)
            assert len(loaded) == 2  # each process loaded the model
        finally:
            ranker.stop()
        gone = time.monotonic() + 15
        while any(procfs.alive(pid) for pid in workers) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not any(procfs.alive(pid) for pid in workers), "a serving process outlived the ranker"
    finally:
        gkc.stop()


def _rank_over_channels(addr: str, req: ranker_pb2.RankRequest, n: int = 12) -> set[str]:
    """One Rank per connection (each its own channel, so the kernel spreads them); revisions seen."""
    revisions = set()
    for _ in range(n):
        with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            reply = ranker_pb2_grpc.RankerStub(channel).Rank(req, timeout=30)
            assert not reply.degraded and len(reply.scores) == len(req.item_ids)
            revisions.add(reply.model_revision)
    return revisions


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_killed_process_is_restarted_and_a_reload_reaches_every_process(
    tmp_path: Path, redis_server: str
) -> None:
    gkc = launch_gkc(tmp_path / "gkc", redis_server)
    try:
        log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=20, seed=3)
        bundle = ranker_world.make_bundle(tmp_path / "bundle", USERS, ITEMS, CATEGORIES, dim=8, uc_dim=4)
        version = int(GkcOpsClient(gkc.http_url, gkc.token).publish(bundle, progress=False)["version"])
        artifact = ranker_world.make_artifact(tmp_path / "models" / "ctr", log, bundle, version)
        ranker = launch_ranker(
            tmp_path / "ranker",
            tmp_path / "models",
            gkc.grpc_addr,
            RANKER_GRPC_PROCESSES="2",
            RANKER_RELOAD_POLL_S="0",  # only POST /v1/models/reload swaps models
        )
        try:
            deadline = time.monotonic() + 60
            while "ranker gRPC process 1 serving" not in ranker.log():
                assert time.monotonic() < deadline, "no second serving process:\n" + ranker.log()[-2000:]
                time.sleep(0.2)
            (first,) = [c for c in procfs.children(ranker.proc.pid) if "spawn_main" in procfs.cmdline(c)]
            items = [f"i{i}" for i in range(0, ITEMS, 4)]
            cats = [f"c{c}" for c in ranker_world.item_category(np.arange(0, ITEMS, 4), CATEGORIES)]
            req = ranker_pb2.RankRequest(user_id="u3", item_ids=items, category_ids=cats)
            (old,) = _rank_over_channels(ranker.grpc_addr, req)

            # a serving process killed from outside (the OOM killer, a native crash) comes back
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while ranker.log().count("ranker gRPC process 1 serving") < 2:
                assert time.monotonic() < deadline, "not restarted:\n" + ranker.log()[-2000:]
                time.sleep(0.2)
            (second,) = [c for c in procfs.children(ranker.proc.pid) if "spawn_main" in procfs.cmdline(c)]
            assert second != first and procfs.alive(second)
            before = procfs.cpu_ticks(second)
            assert _rank_over_channels(ranker.grpc_addr, req, n=24) == {old}
            assert procfs.cpu_ticks(second) > before, "the restarted process served nothing"
            text = httpx.get(f"{ranker.http_url}/metrics", timeout=10).text
            assert _metric(text, "keep_ranker_process_restarts_total") == 1
            # the dead process' per-process gauges left /metrics: one series per live process
            loaded = set(re.findall(r'keep_ranker_models_loaded\{pid="(\d+)"\} 1\.0', text))
            assert loaded == {str(ranker.proc.pid), str(second)}

            # a new revision of the artifact (same files, newer mtimes): the reload answers only once
            # every process has it, so no connection meets the old model afterwards
            later = time.time() + 5
            for path in artifact.rglob("*"):
                os.utime(path, (later, later))
            reply = httpx.post(f"{ranker.http_url}/v1/models/reload", timeout=90)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["loaded"] == ["ctr"]
            assert body["processes"] == [{"process": 1, "pid": second, "confirmed": True, "failed_models": 0}]
            (new,) = _rank_over_channels(ranker.grpc_addr, req, n=24)
            assert new != old
        finally:
            ranker.stop()
    finally:
        gkc.stop()
