"""``RANKER_GRPC_PROCESSES=2``: a second serving process on the same gRPC port (SO_REUSEPORT) answers
calls with knowledge from a real GKC, ``/metrics`` counts the calls of both processes, and stopping the
ranker stops both."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

from bench import ranker_world
from gkc.client import GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from tests.support.servers import launch_gkc, launch_ranker

USERS, ITEMS, CATEGORIES = 20, 200, 8


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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
            workers = [c for c in _children(ranker.proc.pid) if "spawn_main" in _cmdline(c)]
            assert len(workers) == 1, [_cmdline(c) for c in _children(ranker.proc.pid)]
            before = {pid: _cpu_ticks(pid) for pid in workers}
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
            spent = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
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
        while any(_alive(pid) for pid in workers) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "a serving process outlived the ranker"
    finally:
        gkc.stop()
