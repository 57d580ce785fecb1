"""Extra gRPC processes of one ranker (``RANKER_GRPC_PROCESSES > 1``).

Python threads share one interpreter lock, and a ranker's request is half model (torch releases the
lock per operation) and half Python around it (gRPC, the GKC and Redis clients, K̂ assembly), so one
process did not use the second core: at concurrency 16 on 2 cores the machine stayed ~26% idle, and two
processes answered 1.44x the requests/s of one with two model threads (``keep bench ranker``,
``docs/ranker.md``). Each extra process is a whole ranker core of its own (models loaded from the same
directory and polled for changes, its own GKC channel, pins, breaker and admission) serving the same gRPC
port with ``SO_REUSEPORT``; the first process also serves REST and consumes the event stream. Metrics
go to per-process files that the first process' ``/metrics`` sums (``services.metrics``).

The first process keeps them running (``services.supervisor``: a dead one is restarted and counted in
``keep_ranker_process_restarts_total``) and passes ``POST /v1/models/reload`` on to them through shared
memory (:class:`ReloadSignal`): the call answers once every process has rescanned the model directory,
so a deploy that reloads and then ranks never meets a process still on the old model.

The kernel spreads *connections* over the processes: a client with one channel talks to one process.
Callers with several channels, or many callers (the usual case behind a balancer), use all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import multiprocess

from ranker.settings import RankerSettings
from services.logging import setup_logging
from services.metrics import enable_multiprocess
from services.supervisor import ProcessGroup

log = logging.getLogger(__name__)

#: How often a serving process looks for a reload asked of it (a read of shared memory).
RELOAD_CHECK_S = 0.02


@dataclass(frozen=True)
class ReloadSignal:
    """Shared memory of one ranker's processes: the reload generation the first process asks for, and
    per process the generation it has reloaded and how many models failed to load in that reload."""

    asked: Any  # RawValue('q')
    done: Any  # RawArray('q', processes)
    failed: Any  # RawArray('q', processes)

    @classmethod
    def create(cls, processes: int) -> ReloadSignal:
        ctx = mp.get_context("spawn")
        return cls(ctx.RawValue("q", 0), ctx.RawArray("q", processes), ctx.RawArray("q", processes))


class Workers:
    """Processes ``1 .. RANKER_GRPC_PROCESSES - 1`` of a ranker, supervised."""

    def __init__(
        self,
        settings: RankerSettings,
        features_url: str,
        metrics_dir: str,
        on_restart: Callable[[int, int | None, int | None], None] | None = None,
    ) -> None:
        self.signal = ReloadSignal.create(settings.grpc_processes)
        self.metrics_dir = metrics_dir

        def restarted(index: int, pid: int | None, exitcode: int | None) -> None:
            if pid is not None:  # its per-process gauges (models loaded, breaker) leave /metrics
                multiprocess.mark_process_dead(pid, metrics_dir)
            if on_restart is not None:
                on_restart(index, pid, exitcode)

        self.group = ProcessGroup(
            "ranker",
            settings.grpc_processes,
            _worker,
            lambda index: (settings, features_url, metrics_dir, index, self.signal),
            on_restart=restarted,
        )

    def start(self) -> Workers:
        self.group.start()
        return self

    def stop(self) -> None:
        self.group.stop()

    async def reload(self, timeout_s: float) -> list[dict[str, Any]]:
        """Ask every process to rescan the model directory and wait for each to confirm."""
        sig = self.signal
        sig.asked.value += 1
        generation = sig.asked.value
        pids = self.group.pids()
        deadline = time.monotonic() + timeout_s
        while any(sig.done[i] < generation for i in pids) and time.monotonic() < deadline:
            await asyncio.sleep(RELOAD_CHECK_S)
        return [
            {
                "process": i,
                "pid": self.group.pids().get(i),
                "confirmed": sig.done[i] >= generation,
                "failed_models": int(sig.failed[i]) if sig.done[i] >= generation else None,
            }
            for i in sorted(pids)
        ]


def _worker(
    settings: RankerSettings, features_url: str, metrics_dir: str, index: int, sig: ReloadSignal
) -> None:
    setup_logging(settings.log_level, settings.log_json)
    enable_multiprocess(metrics_dir, clean=False)
    asyncio.run(_serve(settings, features_url, metrics_dir, index, sig))


async def _follow_reloads(ranker: Any, sig: ReloadSignal, index: int, stop: asyncio.Event) -> None:
    """Reload when the first process asks (its ``POST /v1/models/reload``), then confirm."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        generation = sig.asked.value
        if sig.done[index] < generation:
            report = await loop.run_in_executor(None, ranker.registry.reload)
            sig.failed[index] = len(report["failed"])
            sig.done[index] = generation
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RELOAD_CHECK_S)


async def _serve(
    settings: RankerSettings, features_url: str, metrics_dir: str, index: int, sig: ReloadSignal
) -> None:
    from ranker.server import build_core, poll_models, start_grpc
    from services.grpc_server import graceful_stop

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for name in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(name, stop.set)
    # what this process loads below is at least as new as every reload asked before it started
    sig.done[index] = sig.asked.value
    async with build_core(settings, features_url, metrics_dir, holder_suffix=f"-p{index}") as ranker:
        server, health, _ = await start_grpc(settings, ranker, reuse_port=True)
        tasks = [
            asyncio.create_task(poll_models(ranker, health, stop)),
            asyncio.create_task(_follow_reloads(ranker, sig, index, stop)),
        ]
        log.info("ranker gRPC process %d serving on %s:%d", index, settings.host, settings.grpc_port)
        await stop.wait()
        await graceful_stop(server, health)
        await asyncio.gather(*tasks, return_exceptions=True)
