"""``keep bench gkc``: GKC BatchGet over gRPC vs the raw Redis floor, one JSON object.

Setup: a private redis-server (or a 3-master cluster with ``--cluster``), a random bundle published
through the REST API (``medium``: 10k users x 50 categories = 500k K̂_uc, 200k items; ``--quick``: 1k
users, 10k items) at a real bundle's block widths, float32: K̂_u and K̂_i 32-d (the two towers' output),
K̂_uc 192-d (each task's 64-d last hidden layer, 3 tasks), and a GKC process with ``GKC_BENCH_WORKERS`` gRPC
processes (default 2; with 1 or 3 the results were within the noise of this shared 2-core machine). Each
request is 1 user x 500 candidates from 50 categories; 80% of the candidates come from a hot 10% of the
items (retrieval output is popularity-skewed).

Measured: p50/p99/rps at concurrency 1 and 16 (load generator: 2 processes x 8 threads, on the same
machine) for (a) ``GkcClient.batch_get`` (request → numpy ``Lookup``) and (b) the raw floor: redis-py +
hiredis fetching the same vectors in one pipeline (HMGET of the user hash + MGET of the items) and
decoding with numpy. At concurrency 1 these two, (c) the float16 wire format (``gkc_float16_c1``) and
(d) the ranker's own client (``gkc_aio_c1``: ``ranker.gkc_source``, grpc.aio; the blocking client's
thread hand-offs add to its tail) take turns in blocks of 100 requests, so they are compared under the
same machine load; ``targets_met`` judges (a) and (d) separately. Also the float16 format's byte saving
and its effect on a dot-product score.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.extractor import ExtractorConfig
from gkc import bundle as gkc_bundle
from gkc.settings import gkc_env
from services import launch

#: A real bundle's block widths: the extractor's default shape (:class:`contract.extractor.ExtractorConfig`).
_SHAPE = ExtractorConfig(n_users=1, n_items=1, n_shops=1, n_categories=1)
USER_DIM = ITEM_DIM = _SHAPE.two_tower_dim
UC_DIM = _SHAPE.tower[-1] * len(_SHAPE.tasks)
CANDIDATES = 500
CATEGORIES = 50
SIZES = {
    "quick": {"users": 1_000, "items": 10_000, "requests": 300, "seconds": 2.0},
    "medium": {"users": 10_000, "items": 200_000, "requests": 2_000, "seconds": 6.0},
}


def make_bundle(out: Path, users: int, items: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    uc_users = np.repeat(np.arange(users), CATEGORIES)
    uc_cats = np.tile(np.arange(CATEGORIES), users)
    built = gkc_bundle.build(
        user_ids=np.arange(users),
        user_vectors=rng.standard_normal((users, USER_DIM), dtype=np.float32),
        item_ids=np.arange(items),
        item_vectors=rng.standard_normal((items, ITEM_DIM), dtype=np.float32),
        uc_user_ids=uc_users,
        uc_category_ids=uc_cats,
        uc_vectors=rng.standard_normal((len(uc_users), UC_DIM), dtype=np.float32),
        source={"bench": True},
    )
    return gkc_bundle.save(built, out)


def make_requests(users: int, items: int, n: int, seed: int = 1) -> list[tuple[str, list[str], list[str]]]:
    rng = np.random.default_rng(seed)
    hot = max(1, items // 10)
    out = []
    for _ in range(n):
        pick_hot = rng.random(CANDIDATES) < 0.8
        ids = np.where(pick_hot, rng.integers(0, hot, CANDIDATES), rng.integers(0, items, CANDIDATES))
        cats = rng.integers(0, CATEGORIES, CANDIDATES)
        out.append((str(rng.integers(users)), ids.astype(str).tolist(), cats.astype(str).tolist()))
    return out


class RawFloor:
    """What a hand-written reader does with the store's own read (:meth:`gkc.redis_store.RedisStore.read`:
    one pipeline round trip, the store's key schema) and a numpy decode: no service, no cache, no
    packing. A key schema change moves the floor with it."""

    def __init__(self, url: str, version: int, cluster: bool) -> None:
        from gkc.redis_store import RedisStore

        self.store = RedisStore(url, cluster=cluster, timeout_s=5.0)
        records, _ = self.store.records()
        self.ns = next(r.namespace for r in records if r.version == version)

    def get(self, user: str, items: list[str], cats: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K̂_u, K̂_uc per distinct category and K̂_i per distinct item, float32 (zeros where missing)."""
        raw = self.store.read(self.ns, user, list(dict.fromkeys(cats)), list(dict.fromkeys(items)))
        return (
            _rows([raw.user], USER_DIM),
            _rows(raw.ucs, UC_DIM),
            _rows(raw.items, ITEM_DIM),
        )


def _rows(blobs: list[bytes | None], dim: int) -> np.ndarray:
    zero = bytes(4 * dim)
    return np.frombuffer(b"".join(b or zero for b in blobs), dtype="<f4").reshape(-1, dim)


def _caller(kind: str, target: str, version: int, cluster: bool) -> Any:
    if kind in ("gkc", "gkc16"):
        from gkc.client import GkcClient

        client = GkcClient(target, timeout_s=5.0, float16=kind == "gkc16")
        return lambda u, i, c: client.batch_get(u, i, c, version)
    if kind == "gkc_aio":
        return _aio_caller(target, version)
    raw = RawFloor(target, version, cluster)
    return raw.get


def _aio_caller(target: str, version: int) -> Any:
    """The ranker's own GKC client (``ranker.gkc_source``, grpc.aio) on a private event loop."""
    import asyncio

    from ranker.gkc_source import GkcKnowledgeSource

    loop = asyncio.new_event_loop()

    async def make() -> GkcKnowledgeSource:
        return GkcKnowledgeSource(target)

    source = loop.run_until_complete(make())
    return lambda u, i, c: loop.run_until_complete(source.batch_get(u, i, c, version, 5.0))


def _load_worker(
    kind: str,
    target: str,
    version: int,
    cluster: bool,
    threads: int,
    seconds: float,
    reqs: list[Any],
    q: Any,
    barrier: Any,
) -> None:
    lat: list[float] = []
    lock = threading.Lock()

    def loop(offset: int) -> None:
        call = _caller(kind, target, version, cluster)
        mine: list[float] = []
        n = offset
        for _ in range(20):  # warm up this connection
            call(*reqs[n % len(reqs)])
            n += 1
        barrier.wait()  # all 16 callers (both processes) start measuring together, after warm-up
        stop_at = time.monotonic() + seconds
        while (now := time.monotonic()) < stop_at:
            call(*reqs[n % len(reqs)])
            mine.append(time.monotonic() - now)
            n += 7
        with lock:
            lat.extend(mine)

    workers = [threading.Thread(target=loop, args=(t * 131,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    q.put(lat)


def _stats(lat: list[float], seconds: float | None = None) -> dict[str, float]:
    arr = np.asarray(lat) * 1000
    total = seconds if seconds is not None else float(arr.sum() / 1000)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "rps": round(len(arr) / total, 1),
        "requests": len(arr),
    }


def measure_interleaved(
    callers: dict[str, Any], reqs: list[Any], n: int, block: int = 100
) -> dict[str, dict[str, float]]:
    """Concurrency 1: sequential calls in this process, the callers taking turns in blocks of
    ``block`` requests on the same request sequence, so that every caller sees the same moments of
    this shared machine (measured one after the other, the floor's p99 alone moved by 2x between runs).
    """
    for call in callers.values():
        for r in reqs[:50]:
            call(*r)
    lat: dict[str, list[float]] = {name: [] for name in callers}
    for start in range(0, n, block):
        for name, call in callers.items():
            for k in range(start, min(start + block, n)):
                r = reqs[k % len(reqs)]
                t0 = time.perf_counter()
                call(*r)
                lat[name].append(time.perf_counter() - t0)
    return {name: _stats(values) for name, values in lat.items()}


def measure_concurrent(
    kind: str, target: str, version: int, cluster: bool, reqs: list[Any], seconds: float
) -> dict[str, float]:
    """Concurrency 16: 2 processes x 8 threads, each calling in a closed loop for ``seconds``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    barrier = ctx.Barrier(16)
    procs = [
        ctx.Process(
            target=_load_worker, args=(kind, target, version, cluster, 8, seconds, reqs[:400], q, barrier)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    lat = [x for _ in procs for x in q.get()]
    for p in procs:
        p.join()
    return {**_stats(lat, seconds), "concurrency": 16}


def _score(lookup: Any) -> np.ndarray:
    """A score that uses every block: the two-tower K̂_u · K̂_i plus the candidate's K̂_uc summed (its
    width differs from K̂_u's, so no product with it)."""
    uc = lookup.ucs[lookup.uc_index].sum(1) / np.sqrt(UC_DIM)
    return np.asarray(lookup.items[lookup.item_index] @ lookup.user + uc)


def float16_effect(target: str, version: int, reqs: list[Any]) -> dict[str, float]:
    from gkc.client import GkcClient

    f32, f16 = GkcClient(target), GkcClient(target, float16=True)
    errs, rel = [], []
    ratio = 0.0
    for user, items, cats in reqs[:50]:
        a, b = f32.batch_get(user, items, cats, version), f16.batch_get(user, items, cats, version)
        score_a, score_b = _score(a), _score(b)
        errs.append(float(np.abs(a.items - b.items).max()))
        rel.append(float(np.abs(score_a - score_b).max() / np.abs(score_a).max()))
        ratio = len(f16.batch_get_raw(user, items, cats, version).SerializeToString()) / len(
            f32.batch_get_raw(user, items, cats, version).SerializeToString()
        )
    return {
        "response_bytes_ratio": round(ratio, 3),
        "max_abs_vector_error": round(max(errs), 6),
        "max_rel_score_error": round(max(rel), 6),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gkc.client import GkcOpsClient
    from gkc.local_redis import EmbeddedRedis, LocalCluster, free_port

    size = "quick" if getattr(args, "quick", False) else "medium"
    cfg = SIZES[size]
    cluster = bool(getattr(args, "cluster", False))
    workers = int(os.environ.get("GKC_BENCH_WORKERS", "2"))
    tmp = Path(tempfile.mkdtemp(prefix="gkc-bench-"))
    redis: Any = (
        LocalCluster(3, tmp / "cluster") if cluster else EmbeddedRedis(tmp / "redis", persistent=False)
    )
    redis.start()
    gkc = None
    try:
        t0 = time.monotonic()
        path = make_bundle(tmp / "bundle", int(cfg["users"]), int(cfg["items"]))
        build_s = time.monotonic() - t0
        grpc_port, http_port = free_port(), free_port()
        token = "bench-token-" + os.urandom(8).hex()
        env = gkc_env(
            grpc_port,
            http_port,
            token,
            redis_url=redis.url,
            host=None,
            GKC_REDIS_CLUSTER=str(cluster).lower(),
            GKC_WORKERS=str(workers),
            GKC_LOG_LEVEL="WARNING",
        )
        gkc = launch.start([sys.executable, "-m", "gkc"], env)
        http_url = f"http://127.0.0.1:{http_port}"
        launch.wait_healthy(gkc, "GKC", f"{http_url}/healthz", timeout_s=30, poll_s=0.1)
        time.sleep(0.5)  # let the extra gRPC workers bind
        ops = GkcOpsClient(http_url, token)
        t0 = time.monotonic()
        version = int(ops.publish(path, progress=sys.stderr.isatty())["version"])
        publish_s = time.monotonic() - t0
        target = f"127.0.0.1:{grpc_port}"
        reqs = make_requests(int(cfg["users"]), int(cfg["items"]), 1000)
        n = int(cfg["requests"])
        result: dict[str, Any] = {
            "size": size,
            "cluster": cluster,
            "redis_masters": _masters(redis.url) if cluster else 1,
            "bundle": {
                "users": cfg["users"],
                "items": cfg["items"],
                "user_categories": int(cfg["users"]) * CATEGORIES,
                "dims": {"user": USER_DIM, "item": ITEM_DIM, "user_category": UC_DIM},
                "build_s": round(build_s, 2),
                "publish_s": round(publish_s, 2),
            },
            "request": {"candidates": CANDIDATES, "categories": CATEGORIES, "hot_item_share": 0.8},
            "gkc_workers": workers,
            **measure_interleaved(
                {
                    "gkc_c1": _caller("gkc", target, version, cluster),
                    "raw_c1": _caller("raw", redis.url, version, cluster),
                    "gkc_float16_c1": _caller("gkc16", target, version, cluster),
                    "gkc_aio_c1": _caller("gkc_aio", target, version, cluster),
                },
                reqs,
                n,
            ),
            "gkc_c16": measure_concurrent("gkc", target, version, cluster, reqs, float(cfg["seconds"])),
            "raw_c16": measure_concurrent("raw", redis.url, version, cluster, reqs, float(cfg["seconds"])),
            "float16": float16_effect(target, version, reqs),
            "cpus": os.cpu_count(),
            "note": "load generator, GKC and Redis share this machine's CPUs (with other users' jobs)",
        }
        result["ratio"] = {
            "p50_c1": round(result["gkc_c1"]["p50_ms"] / result["raw_c1"]["p50_ms"], 2),
            "p99_c1": round(result["gkc_c1"]["p99_ms"] / result["raw_c1"]["p99_ms"], 2),
            "rps_c16": round(result["gkc_c16"]["rps"] / result["raw_c16"]["rps"], 2),
            "p99_c1_aio": round(result["gkc_aio_c1"]["p99_ms"] / result["raw_c1"]["p99_ms"], 2),
        }
        result["targets_met"] = {
            "p99_c1_le_2x_raw": result["ratio"]["p99_c1"] <= 2.0,
            "p99_c1_lt_3ms": result["gkc_c1"]["p99_ms"] < 3.0,
            "aio_p99_c1_le_2x_raw": result["ratio"]["p99_c1_aio"] <= 2.0,
            "aio_p99_c1_lt_3ms": result["gkc_aio_c1"]["p99_ms"] < 3.0,
            "rps_c16_ge_800": result["gkc_c16"]["rps"] >= 800,
        }
        return result
    finally:
        if gkc is not None:
            launch.stop(gkc, timeout_s=30)
        redis.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _masters(url: str) -> int:
    """Primaries as the cluster itself reports them (CLUSTER SLOTS via redis-py)."""
    from redis.cluster import RedisCluster

    client: Any = RedisCluster.from_url(url)
    try:
        return len(client.get_primaries())
    finally:
        client.close()
