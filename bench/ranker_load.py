"""The load side of ``keep bench ranker``: requests over gRPC at a concurrency, the server's own stage
times from its metrics, and variants taking turns so that each sees the same load."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import httpx
import numpy as np

from bench import procfs


def percentiles(lat: list[float], seconds: float) -> dict[str, float]:
    arr = np.asarray(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "rps": round(len(lat) / seconds, 1),
        "requests": len(lat),
    }


def stage_sums(http_url: str) -> dict[str, float]:
    """Seconds spent per stage so far, and the degraded answers per reason (``degraded:<reason>``)."""
    text = httpx.get(f"{http_url}/metrics", timeout=10).text
    out = {}
    for stage in ("features", "gkc", "model", "handoff", "queue"):
        m = re.search(rf'keep_ranker_stage_seconds_sum{{stage="{stage}"}} ([0-9.e+-]+)', text)
        out[stage] = float(m.group(1)) if m else 0.0
    for m in re.finditer(r'keep_ranker_degraded_total{[^}]*reason="([a-z_]+)"[^}]*} ([0-9.e+-]+)', text):
        out[f"degraded:{m.group(1)}"] = out.get(f"degraded:{m.group(1)}", 0.0) + float(m.group(2))
    return out


def phase(
    addr: str,
    http_url: str,
    pid: int,
    requests: list[Any],
    n: int,
    conc: int,
    others: dict[str, int] | None = None,
    channels: int = 1,
) -> dict[str, Any]:
    """``n`` requests at concurrency ``conc`` against one ranker, with its server-side stage times and
    the CPU each process spent per request (``others``: name → pid of the rest of the stack)."""
    pids = {"ranker": pid, **(others or {})}
    before, faults0, cpu0 = stage_sums(http_url), minor_faults(pid), _cpu_seconds(pids)
    lat, seconds, degraded, refused = asyncio.run(load(addr, requests, n, conc, channels))
    after, faults = stage_sums(http_url), minor_faults(pid) - faults0
    cpu = {name: spent_s - cpu0[name] for name, spent_s in _cpu_seconds(pids).items()}
    stats: dict[str, Any] = dict(percentiles(lat, seconds))
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    done = max(len(lat), 1)
    stats["degraded"] = degraded
    stats["degraded_reasons"] = {k.split(":")[1]: int(v) for k, v in spent.items() if ":" in k and v}
    stats["refused"] = refused  # RESOURCE_EXHAUSTED: back-pressure
    stats["features_ms_mean"] = round(spent["features"] / done * 1000, 3)
    stats["features_share"] = round(spent["features"] / max(sum(lat), 1e-9), 3)  # of the request time
    for stage in ("gkc", "model", "handoff", "queue"):
        stats[f"{stage}_ms_mean"] = round(spent[stage] / done * 1000, 3)
    stats["gkc_share"] = round(spent["gkc"] / max(spent["gkc"] + spent["model"], 1e-9), 3)
    stats["ranker_faults_per_request"] = round(faults / done, 1)
    stats["cpu_ms_per_request"] = {name: round(c / done * 1000, 3) for name, c in cpu.items()}
    stats["cpu_busy_share"] = round(sum(cpu.values()) / (seconds * (os.cpu_count() or 1)), 3)
    stats["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return stats


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Phases run in turns, as one: counts add up, means and shares are averaged (equal halves)."""
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key in ("degraded", "refused", "requests"):
            out[key] = sum(values)
        elif key == "degraded_reasons":
            out[key] = {r: sum(v.get(r, 0) for v in values) for r in set().union(*values)}
        elif isinstance(values[0], dict):  # per-process figures: averaged per name
            out[key] = {k: round(sum(v[k] for v in values) / len(values), 3) for k in values[0]}
        elif key == "p99_ms":
            out[key] = max(values)  # the worse half: no raw latencies kept across phases
        else:
            out[key] = round(sum(values) / len(values), 3)
    return out


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process, and of this one (the load generator)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out = {}
    for name, pid in pids.items():
        # a ranker with several serving processes: all of them
        out[name] = sum(procfs.cpu_ticks(one) for one in procfs.tree(pid)) / tick
    times = os.times()
    out["load_generator"] = times.user + times.system
    return out


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (Linux ``/proc``; 0 elsewhere)."""
    fields = procfs.stat(pid)
    return int(fields[7]) if fields else 0


async def load(
    addr: str, requests: list[Any], n: int, concurrency: int, channels: int = 1
) -> tuple[list[float], float, int, int]:
    """Latencies of the answered requests, the wall time, the degraded answers and the refused ones
    (``RESOURCE_EXHAUSTED``: the ranker's back-pressure). ``channels``: connections the clients
    share (client k uses channel k mod channels), as several callers would open."""
    import grpc
    from grpc import aio

    from protos import ranker_pb2_grpc

    latencies: list[float] = []
    degraded = refused = 0
    # a local subchannel pool per channel: its own connection (channels to one address share one else)
    opened = [
        aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
    ]
    try:
        stubs = [ranker_pb2_grpc.RankerStub(channel).Rank for channel in opened]
        counter = iter(range(n))

        async def worker(rank: Any) -> None:
            nonlocal degraded, refused
            for k in counter:
                req = requests[k % len(requests)]
                t0 = time.perf_counter()
                try:
                    resp = await rank(req, timeout=30)
                except aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    refused += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                degraded += resp.degraded

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(stubs[k % channels]) for k in range(concurrency)))
        return latencies, time.perf_counter() - t0, degraded, refused
    finally:
        for channel in opened:
            await channel.close()


def turns(
    rankers: list[tuple[str, str, int]],
    requests: list[Any],
    n: int,
    conc: int,
    others: dict[str, int] | None = None,
    channels: int = 1,
) -> list[dict[str, Any]]:
    """``n`` requests at ``conc`` against each ranker, in two halves taking turns, the second half in
    reverse order (the same load for all, none always first)."""
    halves: list[list[dict[str, Any]]] = [[] for _ in rankers]
    for order in (range(len(rankers)), reversed(range(len(rankers)))):
        for i in order:
            halves[i].append(phase(*rankers[i], requests, n // 2, conc, others, channels))
    return [merge(h) for h in halves]
