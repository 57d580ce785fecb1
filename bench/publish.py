"""``keep bench publish``: what a version costs in Redis per stored dtype, and how fast it goes in.

Setup: a private redis-server; one random bundle at the shapes a real one has (K̂_u and K̂_i 32-d, K̂_uc
64-d per task × 3 tasks = 192-d; 50 categories per user; one user in ten has no K̂_uc), published once
per dtype (float32, float16, int8) with the GKC's own publisher (``gkc.publish.publish`` on a
``RedisStore``). Measured per dtype:

- ``bytes_per_entry``: Redis' own ``MEMORY USAGE`` (``SAMPLES 0``: every field counted) of sampled keys:
  K̂_i = an item key; K̂_u = the hash of a user without K̂_uc; K̂_uc = (user hash with K̂_uc - user hash
  without) / categories per user. Key names are the real ones (``gkc:v<N>.<pub>:u:<id>``, ids of 7-8
  characters), so the figures include the key and field names.
- ``used_memory_per_entry``: ``used_memory`` growth of the whole publish / entries (includes Redis'
  dict tables and the version's key log; the figure to size with); ``recorded_bytes``: what the
  version's record says (``GET /v1/versions/{v}``); ``keylog_bytes_per_key``: the key log's
  ``MEMORY USAGE`` per key of the version (deletion reads it);
- ``publish_entries_per_s`` (one writer, pipelined batches of ``GKC_PUBLISH_BATCH``) and ``streamed``:
  the same bundle (float32, int8) published from the tar ``keep publish`` uploads, read as a stream as
  ``POST /v1/versions`` does (:mod:`gkc.publish_stream`; ``spooled_members`` 0: nothing went to disk);
- ``bulk``: the publisher's writes alone (``gkc.publish.write_data``: pipelined batches, the key log,
  no verification) into one staging version, from 1 or 2 processes x 1 or 2 writer threads each,
  entries/s from a common start (float32 and int8);
- ``read``: the in-process read path (``KnowledgeCenter.batch_get``, 1 user × 500 uniformly drawn
  candidates, each dtype with its own item cache filling up as in serving, float32 wire), p50 / p99 in
  ms, the dtypes taking turns in blocks of 50 requests so that they share the machine's load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract import quantize as quant
from gkc import bundle as gkc_bundle

USER_DIM, ITEM_DIM, UC_DIM = 32, 32, 192
CATEGORIES = 50
SIZES = {
    "quick": {"users": 300, "items": 5_000, "requests": 100},
    "full": {"users": 4_000, "items": 50_000, "requests": 600},
}


def make_bundle(users: int, items: int, seed: int = 0) -> gkc_bundle.Bundle:
    rng = np.random.default_rng(seed)
    with_uc = np.arange(users)[np.arange(users) % 10 != 0]
    uc_users = np.repeat(with_uc, CATEGORIES)
    uc_cats = np.tile(np.arange(CATEGORIES), len(with_uc))
    return gkc_bundle.build(
        user_ids=[f"u{u:07d}" for u in range(users)],
        user_vectors=rng.standard_normal((users, USER_DIM), dtype=np.float32),
        item_ids=[f"i{i:07d}" for i in range(items)],
        item_vectors=rng.standard_normal((items, ITEM_DIM), dtype=np.float32),
        uc_user_ids=[f"u{u:07d}" for u in uc_users],
        uc_category_ids=[f"{c:05d}" for c in uc_cats],
        uc_vectors=rng.standard_normal((len(uc_users), UC_DIM), dtype=np.float32),
        source={"bench": "publish"},
    )


def _usage(client: Any, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return float(np.mean([int(v) for v in pipe.execute()]))


def entry_bytes(client: Any, ns: str, bundle: gkc_bundle.Bundle, n: int = 200) -> dict[str, float]:
    """Mean ``MEMORY USAGE`` per entry of each block (see the module docstring)."""
    from gkc.redis_store import item_key, user_key

    users = bundle.user_ids.tolist()
    bare = [user_key(ns, u) for i, u in enumerate(users) if i % 10 == 0][:n]
    full = [user_key(ns, u) for i, u in enumerate(users) if i % 10 != 0][:n]
    items = [item_key(ns, i) for i in bundle.item_ids[:n].tolist()]
    user_only = _usage(client, bare)
    return {
        "user": round(user_only, 1),
        "item": round(_usage(client, items), 1),
        "uc": round((_usage(client, full) - user_only) / CATEGORIES, 1),
    }


def _requests(bundle: gkc_bundle.Bundle, n: int, seed: int = 1) -> list[tuple[str, list[str], list[str]]]:
    rng = np.random.default_rng(seed)
    users, items = bundle.user_ids.tolist(), bundle.item_ids.tolist()
    out = []
    for _ in range(n):
        picked = rng.integers(0, len(items), 500)
        cats = rng.integers(0, CATEGORIES, 500)
        out.append((users[rng.integers(len(users))], [items[i] for i in picked], [f"{c:05d}" for c in cats]))
    return out


def read_latency(store: Any, versions: dict[str, int], requests: list[Any]) -> dict[str, dict[str, float]]:
    from gkc.read_path import KnowledgeCenter

    times: dict[str, list[float]] = {d: [] for d in versions}
    centers = {d: KnowledgeCenter(store) for d in versions}
    block = 50
    for start in range(0, len(requests), block):
        for dtype, version in versions.items():
            center = centers[dtype]
            for user, items, cats in requests[start : start + block]:
                t0 = time.perf_counter()
                center.batch_get(user, items, cats, version)
                times[dtype].append(time.perf_counter() - t0)
    return {
        d: {
            "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 3),
        }
        for d, t in times.items()
    }


def _part(bundle: gkc_bundle.Bundle, part: int, parts: int) -> gkc_bundle.Bundle:
    """Rows ``[part/parts, (part+1)/parts)`` of every block (what one of ``parts`` writers writes)."""
    import dataclasses

    def span(n: int) -> slice:
        return slice(n * part // parts, n * (part + 1) // parts)

    c = bundle.manifest.counts
    su, si, sc = span(c.users), span(c.items), span(c.user_categories)
    fields: dict[str, Any] = {}
    for name, sl in (("user", su), ("item", si), ("uc", sc)):
        fields[f"{name}_vectors"] = getattr(bundle, f"{name}_vectors")[sl]
        scales = getattr(bundle, f"{name}_scales")
        fields[f"{name}_scales"] = None if scales is None else scales[sl]
    counts = gkc_bundle.Counts(su.stop - su.start, si.stop - si.start, sc.stop - sc.start)
    return gkc_bundle.Bundle(
        manifest=dataclasses.replace(bundle.manifest, counts=counts),
        user_ids=bundle.user_ids[su],
        item_ids=bundle.item_ids[si],
        uc_user_ids=bundle.uc_user_ids[sc],
        uc_category_ids=bundle.uc_category_ids[sc],
        **fields,
    )


def _writer(
    url: str,
    path: str,
    staging: Any,
    part: int,
    parts: int,
    threads: int,
    batch: int,
    start: Any,
    cluster: bool = False,
    node_pipelines: bool = True,
) -> int:
    """One writer process: load its part, meet the others at the barrier, write, return entries."""
    from gkc.publish import write_data
    from gkc.redis_store import RedisStore

    store = RedisStore(url, cluster=cluster, timeout_s=30.0, node_pipelines=node_pipelines)
    bundle = _part(gkc_bundle.load(path, mmap=True, verify_checksums=False), part, parts)
    start.wait()  # a barrier: every writer and the timer
    written = write_data(store, staging, bundle, batch=batch, progress=False, writers=threads)
    store.close()
    return sum(written.values())


def bulk_load(
    url: str,
    path: Path,
    processes: int,
    threads: int,
    batch: int,
    cluster: bool = False,
    node_pipelines: bool = True,
) -> dict[str, Any]:
    """Entries/s of the publisher's writes alone (no verification) into one staging version from
    ``processes`` processes x ``threads`` writer threads; the version is removed afterwards."""
    import multiprocessing as mp

    from gkc.publish import abort
    from gkc.redis_store import RedisStore

    store = RedisStore(url, cluster=cluster, timeout_s=30.0)
    m = gkc_bundle.read_manifest(path)
    staging = store.begin(m.to_json(), m.content_checksum(), m.dims)
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    start = manager.Barrier(processes + 1)
    with ctx.Pool(processes) as pool:
        results = [
            pool.apply_async(
                _writer,
                (url, str(path), staging, p, processes, threads, batch, start, cluster, node_pipelines),
            )
            for p in range(processes)
        ]
        start.wait()  # every process has imported and loaded its part
        t0 = time.perf_counter()
        entries = sum(r.get() for r in results)
        seconds = time.perf_counter() - t0
    abort(store, staging, "bench")
    store.close()
    manager.shutdown()
    return {
        "processes": processes,
        "threads": threads,
        **({"node_pipelines": node_pipelines} if cluster else {}),
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds),
    }


def _cluster_bulk(root: Path, size: str, shape: dict[str, int], batch: int) -> dict[str, Any]:
    """``--cluster``: the bulk figures into a local 3-master Redis Cluster (``gkc.local_redis``)."""
    import os

    from gkc.local_redis import LocalCluster

    cluster = LocalCluster(3, root / "cluster").start()
    try:
        # per-node pipelines (the publisher's way) against redis-py's cluster pipeline, taking turns
        bulk = {
            dtype: [
                bulk_load(cluster.url, root / dtype, p, t, batch, cluster=True, node_pipelines=per_node)
                for p, t in ((1, 2), (2, 2))
                for per_node in (True, False)
            ]
            for dtype in ("float32", "int8")
        }
    finally:
        cluster.stop()
    return {
        "bench": "publish",
        "size": size,
        "redis": "3-master Redis Cluster (gkc.local_redis.LocalCluster)",
        "shape": {**shape, "categories": CATEGORIES, "dims": [USER_DIM, ITEM_DIM, UC_DIM], "batch": batch},
        "bulk": bulk,
        "load": os.getloadavg()[0],
    }


def streamed_publish(store: Any, path: Path, batch: int) -> dict[str, Any]:
    """The bundle at ``path`` published from its upload tar read as a stream (:mod:`gkc.publish_stream`,
    what ``POST /v1/versions`` runs), against the publisher reading the bundle's files."""
    from gkc.client import tar_bundle
    from gkc.publish_stream import StreamedPublish, StreamSettings

    tar = tar_bundle(path, path.with_suffix(".tar"))
    with tempfile.TemporaryDirectory(prefix="keep-bench-spool-") as spool, tar.open("rb") as src:
        streamed = StreamedPublish(store, StreamSettings(batch=batch, max_ready=10), Path(spool))
        t0 = time.perf_counter()
        result = streamed.run(src)
        seconds = time.perf_counter() - t0
    tar.unlink()
    t0 = time.perf_counter()
    gkc_bundle.load(path, mmap=True)  # what the file path does before publishing (untimed there)
    verify = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 3),
        "entries_per_s": round(result.entries / seconds),
        "spooled_members": streamed.spooled_members,
        # checksums and value checks are in the streamed seconds; the file path's are these
        "file_verify_seconds": round(verify, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from gkc.bundle_writer import convert
    from gkc.local_redis import EmbeddedRedis
    from gkc.publish import publish
    from gkc.redis_store import RedisStore, keylog_key

    size = "quick" if getattr(args, "quick", False) else "full"
    shape = SIZES[size]
    batch = int(os.environ.get("GKC_PUBLISH_BATCH", "2000"))
    with tempfile.TemporaryDirectory(prefix="keep-bench-publish-") as tmp:
        root = Path(tmp)
        base = make_bundle(shape["users"], shape["items"])
        saved = gkc_bundle.load(gkc_bundle.save(base, root / "float32"))
        bundles = {"float32": saved}
        for dtype in ("float16", "int8"):
            bundles[dtype] = gkc_bundle.load(convert(saved, dtype, root / dtype))
        if getattr(args, "cluster", False):
            return _cluster_bulk(root, size, shape, batch)
        redis = EmbeddedRedis(root / "redis", persistent=False).start()
        store = RedisStore(redis.url, timeout_s=30.0)
        try:
            out: dict[str, Any] = {}
            versions: dict[str, int] = {}
            for dtype, bundle in bundles.items():
                before = int(store.client.info("memory")["used_memory"])
                t0 = time.perf_counter()
                result = publish(store, bundle, batch=batch, progress=False, max_ready=10)
                seconds = time.perf_counter() - t0
                after = int(store.client.info("memory")["used_memory"])
                record = next(r for r in store.records()[0] if r.version == result.version)
                ns = record.namespace
                versions[dtype] = result.version
                keylog = int(store.client.memory_usage(keylog_key(ns), samples=0) or 0)
                out[dtype] = {
                    "row_bytes": {
                        "user": quant.row_bytes(dtype, USER_DIM),
                        "item": quant.row_bytes(dtype, ITEM_DIM),
                        "uc": quant.row_bytes(dtype, UC_DIM),
                    },
                    "bytes_per_entry": entry_bytes(store.client, ns, bundle),
                    "used_memory_bytes": after - before,
                    "used_memory_per_entry": round((after - before) / result.entries, 1),
                    "recorded_bytes": record.size_bytes,
                    "keylog_bytes": keylog,
                    "keylog_bytes_per_key": round(keylog / record.keys, 1),
                    "entries": result.entries,
                    "publish_seconds": round(seconds, 3),
                    "publish_entries_per_s": round(result.entries / seconds),
                }
            for dtype in ("float32", "int8"):  # POST /v1/versions' way, from the tar keep publish sends
                out[dtype]["streamed"] = streamed_publish(store, root / dtype, batch)
            latency = read_latency(store, versions, _requests(base, shape["requests"]))
            for dtype, figures in latency.items():
                out[dtype]["read"] = figures
            for dtype in ("float32", "int8"):
                out[dtype]["bulk"] = [
                    bulk_load(redis.url, root / dtype, processes, threads, batch)
                    for processes, threads in ((1, 1), (1, 2), (2, 1), (2, 2))
                ]
        finally:
            store.close()
            redis.stop()
    uc = {d: out[d]["bytes_per_entry"]["uc"] for d in out}
    return {
        "bench": "publish",
        "size": size,
        "shape": {**shape, "categories": CATEGORIES, "dims": [USER_DIM, ITEM_DIM, UC_DIM], "batch": batch},
        "redis": "redis-server (private, no persistence)",
        "dtypes": out,
        "targets": {
            "uc_int8_bytes_le_300": uc["int8"] <= 300,
            "int8_read_p50_within_10pct_of_float32": out["int8"]["read"]["p50_ms"]
            <= 1.1 * out["float32"]["read"]["p50_ms"],
        },
        "load": os.getloadavg()[0],
    }
