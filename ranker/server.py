"""``keep serve ranker``: gRPC ``Rank`` + REST in one process, models hot-reloaded from the model dir.

Process layout: one asyncio loop runs the gRPC server, the FastAPI app (uvicorn), the GKC channel and
the model-dir poller; models run in a small thread pool (``RANKER_MODEL_WORKERS``, torch with
``RANKER_TORCH_THREADS`` intra-op threads each), so scoring never blocks the loop. SIGTERM / SIGINT:
health goes NOT_SERVING, in-flight calls finish, then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import uvicorn

from ranker.breaker import CircuitBreaker
from ranker.features import open_store
from ranker.gkc_pins import ModelPins, holder_name
from ranker.gkc_source import GkcKnowledgeSource
from ranker.grpc_app import SERVICE_NAME, RankerServicer, register
from ranker.metrics import RankerMetrics
from ranker.registry import ModelRegistry, ModelSnapshot
from ranker.rest_app import create_app
from ranker.service import Budget, RankerService
from ranker.settings import RankerSettings
from services.errors import InvalidArgument
from services.grpc_server import build_server, graceful_stop, mark_serving
from services.logging import setup_logging

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """Uvicorn without its own signal handling: the ranker process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Ranker:
    """Everything a running ranker holds; built by :func:`build` (also used by tests and the bench)."""

    settings: RankerSettings
    service: RankerService
    registry: ModelRegistry
    metrics: RankerMetrics
    source: GkcKnowledgeSource
    executor: ThreadPoolExecutor


@contextlib.asynccontextmanager
async def build(settings: RankerSettings) -> AsyncIterator[Ranker]:
    """Load features and models, connect to GKC; call inside the serving event loop."""
    settings.check()
    torch.set_num_threads(settings.torch_threads)
    metrics = RankerMetrics()
    loop = asyncio.get_running_loop()
    pins = ModelPins(
        settings.gkc_api_url,
        settings.gkc_api_token.get_secret_value() if settings.gkc_api_token else None,
        holder=holder_name(settings.grpc_port),
        ttl_s=settings.pin_ttl_s,
        ca_file=settings.gkc_ca_file,
    )

    def on_change(snaps: list[ModelSnapshot]) -> None:
        metrics.set_models([(s.name, s.revision, s.knowledge_version) for s in snaps])
        pins.sync(snaps)  # a lease per model on its knowledge version (ranker.gkc_pins)

    features = await loop.run_in_executor(None, open_store, settings.features_path, settings.features_max_len)
    registry = ModelRegistry(
        settings.model_dir,
        default_model=settings.default_model,
        shared_features=features,
        on_change=on_change,
        on_load=lambda result: metrics.reloads.labels(result).inc(),
    )
    report = await loop.run_in_executor(None, registry.reload)
    if not report["models"]:
        log.warning(
            "no model loaded from %s yet; waiting for one (health is NOT_SERVING)", settings.model_dir
        )
    source = GkcKnowledgeSource(settings.gkc_addr, ca_file=settings.gkc_ca_file, tls=settings.gkc_tls)
    breaker = CircuitBreaker(
        settings.breaker_failures, settings.breaker_reset_s, on_change=metrics.on_breaker
    )
    executor = ThreadPoolExecutor(settings.workers(), thread_name_prefix="ranker-model")
    service = RankerService(
        registry,
        source,
        breaker=breaker,
        metrics=metrics,
        max_candidates=settings.max_candidates,
        budget=Budget(settings.gkc_timeout_s, settings.request_deadline_s, settings.model_reserve_s),
        executor=executor,
    )
    try:
        yield Ranker(settings, service, registry, metrics, source, executor)
    finally:
        await loop.run_in_executor(None, pins.close)
        await source.close()
        executor.shutdown(wait=True)


async def _poll_models(ranker: Ranker, health: object, stop: asyncio.Event) -> None:
    """Reload changed artifacts every ``reload_poll_s``; flip gRPC health with model presence."""
    loop = asyncio.get_running_loop()
    interval = ranker.settings.reload_poll_s
    serving = bool(ranker.registry.snapshots())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval if interval > 0 else 1.0)
        if stop.is_set():
            break
        if interval > 0:
            try:
                await loop.run_in_executor(None, ranker.registry.reload)
            except Exception:
                log.exception("model reload failed")
        now = bool(ranker.registry.snapshots())
        if now and not serving:
            await mark_serving(health, [SERVICE_NAME])
        serving = now


async def run_async(
    settings: RankerSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set (tests and the bench run this in a thread of their own)."""
    async with build(settings) as ranker:
        servicer = RankerServicer(ranker.service)
        server, health = build_server([register(servicer)], [SERVICE_NAME])
        server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        await server.start()
        if ranker.registry.snapshots():
            await mark_serving(health, [SERVICE_NAME])
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        config = uvicorn.Config(
            create_app(ranker.service, token),
            host=settings.host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
        http = _Uvicorn(config)
        http_task = asyncio.create_task(http.serve())
        poll_task = asyncio.create_task(_poll_models(ranker, health, stop))
        log.info(
            "ranker serving gRPC on %s:%d and REST on %s:%d; models %s; GKC at %s",
            settings.host,
            settings.grpc_port,
            settings.host,
            settings.http_port,
            [m.name for m in ranker.registry.snapshots()],
            settings.gkc_addr,
        )
        if ready is not None:
            ready.set()
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await graceful_stop(server, health)
        http.should_exit = True
        await asyncio.gather(http_task, poll_task, return_exceptions=True)
        if http_task in done and http_task.exception() is not None:
            raise http_task.exception()  # type: ignore[misc]


async def _main(settings: RankerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_async(settings, stop)
    log.info("ranker stopped")


def settings_from_args(args: argparse.Namespace | None = None) -> RankerSettings:
    """``RANKER_*`` settings; ``--workers N`` sets the model worker threads (``RANKER_MODEL_WORKERS``).

    The ranker is one process: torch releases the GIL, so threads already use the cores, and one
    process keeps one copy of every model and of the feature store in memory.
    """
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise InvalidArgument(f"--workers must be >= 1, got {workers}")
    return RankerSettings(**({"model_workers": workers} if workers else {}))


def serve(args: argparse.Namespace | None = None) -> int:
    """Entry point for ``keep serve ranker`` (settings from ``RANKER_*``)."""
    settings = settings_from_args(args)
    setup_logging(settings.log_level, settings.log_json)
    asyncio.run(_main(settings))
    return 0
