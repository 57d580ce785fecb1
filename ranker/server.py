"""``keep serve ranker``: gRPC ``Rank`` + REST, models hot-reloaded from the model dir.

Process layout: one asyncio loop runs the gRPC server, the FastAPI app (uvicorn), the GKC channel and
the model-dir poller; models run in a small thread pool (``RANKER_MODEL_WORKERS``, torch with
``RANKER_TORCH_THREADS`` intra-op threads each), so scoring never blocks the loop. With
``RANKER_GRPC_PROCESSES > 1`` more processes serve gRPC on the same port (``ranker.workers``). SIGTERM /
SIGINT: health goes NOT_SERVING, in-flight calls finish, the other processes stop, then this one exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from grpc import aio

from ranker.admission import Admission
from ranker.breaker import BreakerState, CircuitBreaker, log_breaker
from ranker.event_stream import StreamConsumer
from ranker.gkc_pins import ModelPins, holder_name
from ranker.gkc_source import GkcKnowledgeSource
from ranker.grpc_app import SERVICE_NAME, RankerServicer, register
from ranker.memory import keep_freed_memory
from ranker.metrics import RankerMetrics
from ranker.registry import ModelRegistry, ModelSnapshot
from ranker.rest_app import create_app
from ranker.sequence_store import RedisSequenceStore, embedded
from ranker.service import Budget, RankerService
from ranker.settings import RankerSettings
from ranker.workers import Workers
from services.errors import Unavailable
from services.grpc_server import add_port, build_server, graceful_stop, mark_not_serving, mark_serving
from services.http import BearerToken, http_server
from services.logging import setup_logging
from services.metrics import multiprocess_dir
from services.ports import require_free

log = logging.getLogger(__name__)


@dataclass
class Ranker:
    """Everything a running ranker holds; built by :func:`build` (also used by tests and the bench)."""

    settings: RankerSettings
    service: RankerService
    registry: ModelRegistry
    metrics: RankerMetrics
    source: GkcKnowledgeSource
    executor: ThreadPoolExecutor
    features: RedisSequenceStore


@contextlib.asynccontextmanager
async def build(settings: RankerSettings, metrics_dir: str | None = None) -> AsyncIterator[Ranker]:
    """Open the sequence store, load models, connect to GKC; call inside the serving event loop."""
    settings.check()
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        url = settings.features_redis_url
        if url is None:  # the embedded default: a private redis-server under RANKER_DATA_DIR/features
            url = await loop.run_in_executor(
                None, stack.enter_context, embedded(settings.features_data_dir())
            )
        async with build_core(settings, url, metrics_dir) as ranker:
            yield ranker


@contextlib.asynccontextmanager
async def build_core(
    settings: RankerSettings, features_url: str, metrics_dir: str | None = None, holder_suffix: str = ""
) -> AsyncIterator[Ranker]:
    """A ranker core on an open sequence store (every serving process builds one)."""
    torch.set_num_threads(settings.torch_threads)
    keep_freed_memory()
    metrics = RankerMetrics(metrics_dir)
    loop = asyncio.get_running_loop()
    pins = ModelPins(
        settings.gkc_api_url,
        settings.gkc_api_token.get_secret_value() if settings.gkc_api_token else None,
        holder=holder_name(settings.grpc_port) + holder_suffix,
        ttl_s=settings.pin_ttl_s,
        ca_file=settings.gkc_ca_file,
    )

    def on_change(snaps: list[ModelSnapshot]) -> None:
        metrics.set_models([(s.name, s.revision, s.knowledge_version) for s in snaps])
        pins.sync(snaps)  # a lease per model on its knowledge version (ranker.gkc_pins)

    features = RedisSequenceStore(
        features_url,
        max_len=settings.features_max_len,
        ttl_s=settings.features_ttl_s,
        dedup_ttl_s=settings.events_dedup_ttl_s,
        timeout_s=settings.features_timeout_s,
    )
    registry = ModelRegistry(
        settings.model_dir,
        default_model=settings.default_model,
        features_max_len=settings.features_max_len,
        torchscript=settings.torchscript,
        on_change=on_change,
        on_load=lambda result: metrics.reloads.labels(result).inc(),
    )
    report = await loop.run_in_executor(None, registry.reload)
    if not report["models"]:
        log.warning(
            "no model loaded from %s yet; waiting for one (health is NOT_SERVING)", settings.model_dir
        )
    source = GkcKnowledgeSource(
        settings.gkc_addr, ca_file=settings.gkc_ca_file, tls=settings.gkc_tls, float16=settings.gkc_float16
    )

    def on_breaker(state: BreakerState) -> None:
        metrics.on_breaker(state)
        log_breaker(state, settings.gkc_addr)

    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s, on_change=on_breaker)
    executor = ThreadPoolExecutor(settings.workers(), thread_name_prefix="ranker-model")
    service = RankerService(
        registry,
        source,
        breaker=breaker,
        metrics=metrics,
        max_candidates=settings.max_candidates,
        budget=Budget(
            settings.gkc_timeout_s,
            settings.request_deadline_s,
            settings.model_reserve_s,
            settings.features_timeout_s,
        ),
        executor=executor,
        overlap_knowledge=settings.overlap_knowledge,
        features=features,
        events=features,
        admission=Admission(settings.in_flight_limit(), settings.max_queue, settings.queue_timeout_s),
    )
    try:
        yield Ranker(settings, service, registry, metrics, source, executor, features)
    finally:
        await loop.run_in_executor(None, pins.close)
        await source.close()
        await features.close()
        executor.shutdown(wait=True)


async def poll_models(ranker: Ranker, health: object, stop: asyncio.Event) -> None:
    """Reload changed artifacts every ``reload_poll_s``; flip gRPC health with model presence (both
    ways, as ``/healthz``: SERVING while a model is loaded, NOT_SERVING while none is)."""
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
        elif serving and not now:  # as /healthz: no model, nothing to serve
            await mark_not_serving(health, [SERVICE_NAME])
        serving = now


async def run_async(
    settings: RankerSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set (tests and the bench run this in a thread of their own)."""
    ports = [(settings.grpc_port, "RANKER_GRPC_PORT"), (settings.http_port, "RANKER_HTTP_PORT")]
    require_free(settings.host, ports)
    several = settings.grpc_processes > 1
    with contextlib.ExitStack() as cleanup:
        metrics_dir = cleanup.enter_context(multiprocess_dir("ranker-metrics-")) if several else None
        async with build(settings, metrics_dir) as ranker:
            restarts = ranker.metrics.process_restarts
            workers = None
            if metrics_dir is not None:
                workers = Workers(settings, ranker.features.url, metrics_dir, lambda *_: restarts.inc())
                workers.start()
            try:
                await _serve(settings, ranker, stop, workers, ready)
            finally:
                if workers is not None:  # before this process closes what they share (an embedded store)
                    workers.stop()


async def reload_models(ranker: Ranker, workers: Workers | None) -> dict[str, Any]:
    """``POST /v1/models/reload``: this process rescans the model dir, then every other serving
    process does; answers once all confirmed (503 naming those that did not in time)."""
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, ranker.registry.reload)
    if workers is None:
        return report
    timeout_s = ranker.settings.reload_timeout_s
    report["processes"] = processes = await workers.reload(timeout_s)
    late = [p["process"] for p in processes if not p["confirmed"]]
    if late:
        raise Unavailable(
            f"serving processes {late} did not confirm the reload within {timeout_s:g} s "
            f"(RANKER_RELOAD_TIMEOUT_S); this process reloaded {report['loaded'] or 'nothing new'}; retry"
        )
    return report


async def start_grpc(
    settings: RankerSettings, ranker: Ranker, reuse_port: bool
) -> tuple[aio.Server, Any, BearerToken]:
    """The gRPC server of one serving process, started; SERVING once a model is loaded."""
    events_auth = BearerToken(settings.events_token, name="RANKER_EVENTS_TOKEN")
    servicer = RankerServicer(ranker.service, events_auth)
    server, health = build_server([register(servicer)], [SERVICE_NAME], so_reuseport=reuse_port)
    add_port(server, f"{settings.host}:{settings.grpc_port}", settings.tls_cert, settings.tls_key)
    await server.start()
    if ranker.registry.snapshots():
        await mark_serving(health, [SERVICE_NAME])
    return server, health, events_auth


async def _serve(
    settings: RankerSettings,
    ranker: Ranker,
    stop: asyncio.Event,
    workers: Workers | None,
    ready: asyncio.Event | None,
) -> None:
    """The first process: gRPC (sharing its port with the ``workers``), REST, the model poller and
    the event-stream consumer, until ``stop``."""
    server, health, events_auth = await start_grpc(settings, ranker, reuse_port=workers is not None)
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if token is None and not settings.reload_open():
        log.warning(
            "RANKER_ADMIN_TOKEN is unset and the ranker listens on %s: POST /v1/models/reload is "
            "refused (set a token to use it)",
            settings.host,
        )
    app = create_app(
        ranker.service,
        token,
        events_auth,
        reload_open=settings.reload_open(),
        reload=lambda: reload_models(ranker, workers),
    )
    http = http_server(app, settings, settings.http_port)
    http_task = asyncio.create_task(http.serve())
    poll_task = asyncio.create_task(poll_models(ranker, health, stop))
    consumer = None
    if settings.events_stream:
        metrics = ranker.metrics
        consumer = StreamConsumer(
            ranker.features.url,
            ranker.service.record_events,
            stream=settings.events_stream,
            group=settings.events_group,
            on_invalid=lambda n: metrics.events.labels("stream", "invalid").inc(n),
        )
        consume_task = asyncio.create_task(consumer.run(stop))
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
    if consumer is not None:
        consume_task.cancel()
        await asyncio.gather(consume_task, return_exceptions=True)
        await consumer.close()
    if http_task in done and http_task.exception() is not None:
        raise http_task.exception()  # type: ignore[misc]


async def _main(settings: RankerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_async(settings, stop)
    log.info("ranker stopped")


def serve(settings: RankerSettings) -> int:
    """Entry point for ``keep serve ranker`` and ``python -m ranker`` (settings built by the caller).

    One process by default: one copy of every model in memory. ``RANKER_GRPC_PROCESSES > 1`` adds
    serving processes on the same gRPC port (``ranker.workers``): a request is half Python, and Python
    threads share one lock, so a process per core answered 1.44x the requests/s at concurrency 16.
    """
    setup_logging(settings.log_level, settings.log_json)
    asyncio.run(_main(settings))
    return 0
