"""Extra gRPC processes of one ranker (``RANKER_GRPC_PROCESSES > 1``).

Python threads share one interpreter lock, and a ranker's request is half model (torch releases the
lock per operation) and half Python around it (gRPC, the GKC and Redis clients, K̂ assembly), so one
process did not use the second core: at concurrency 16 on 2 cores the machine stayed ~26% idle, and two
processes answered 1.44x the requests/s of one with two model threads (``keep bench ranker``,
``docs/ranker.md``). Each extra process is a whole ranker core of its own (models loaded from the same
directory and polled for changes, its own GKC channel, pins, breaker and admission) serving the same gRPC
port with ``SO_REUSEPORT``; the first process also serves REST and consumes the event stream. Metrics
go to per-process files that the first process' ``/metrics`` sums (``services.metrics``).

The kernel spreads *connections* over the processes: a client with one channel talks to one process.
Callers with several channels, or many callers (the usual case behind a balancer), use all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import signal
from multiprocessing.process import BaseProcess

from ranker.settings import RankerSettings
from services.logging import setup_logging
from services.metrics import enable_multiprocess

log = logging.getLogger(__name__)


def start_workers(settings: RankerSettings, features_url: str, metrics_dir: str) -> list[BaseProcess]:
    """Spawn ``grpc_processes - 1`` serving processes (daemons: they die with this one)."""
    ctx = mp.get_context("spawn")
    procs: list[BaseProcess] = []
    for index in range(1, settings.grpc_processes):
        args = (settings, features_url, metrics_dir, index)
        proc = ctx.Process(target=_worker, args=args, daemon=True, name=f"ranker-{index}")
        proc.start()
        procs.append(proc)
    return procs


def stop_workers(procs: list[BaseProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM (each drains its calls, as the first process does), then wait."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()


def _worker(settings: RankerSettings, features_url: str, metrics_dir: str, index: int) -> None:
    setup_logging(settings.log_level, settings.log_json)
    enable_multiprocess(metrics_dir, clean=False)
    asyncio.run(_serve(settings, features_url, metrics_dir, index))


async def _serve(settings: RankerSettings, features_url: str, metrics_dir: str, index: int) -> None:
    from ranker.server import build_core, poll_models, start_grpc
    from services.grpc_server import graceful_stop

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with build_core(settings, features_url, metrics_dir, holder_suffix=f"-p{index}") as ranker:
        server, health, _ = await start_grpc(settings, ranker, reuse_port=True)
        poll = asyncio.create_task(poll_models(ranker, health, stop))
        log.info("ranker gRPC process %d serving on %s:%d", index, settings.host, settings.grpc_port)
        await stop.wait()
        await graceful_stop(server, health)
        with contextlib.suppress(Exception):
            await poll
