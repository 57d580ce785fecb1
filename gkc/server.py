"""``keep serve gkc``: gRPC reads + REST ops in one process, plus optional extra gRPC worker processes.

Process layout: the main process owns the embedded Redis (when ``GKC_REDIS_URL`` is unset), the REST
API, the janitor and gRPC worker 0; ``GKC_WORKERS - 1`` more processes serve gRPC on the same port
(SO_REUSEPORT lets the kernel spread connections). SIGTERM / SIGINT: health goes NOT_SERVING, in-flight
calls finish, workers stop, then Redis is shut down cleanly (it writes its AOF/RDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from gkc.grpc_service import POOLED_S, SERVICE_NAME, GkcServicer, register
from gkc.health import HealthMonitor, fitness_problem
from gkc.integrity import Shadow, reconcile
from gkc.janitor import Janitor
from gkc.local_redis import EmbeddedRedis
from gkc.metrics import GkcMetrics
from gkc.operations import PublishLimits, VersionOps
from gkc.read_path import KnowledgeCenter
from gkc.redis_store import RedisStore
from gkc.rest import create_app
from gkc.settings import GkcSettings
from services.errors import Unavailable
from services.grpc_server import add_port, build_server, graceful_stop
from services.http import http_server
from services.logging import setup_logging
from services.metrics import enable_multiprocess, multiprocess_dir
from services.ports import require_free
from services.supervisor import ProcessGroup

log = logging.getLogger(__name__)


@dataclass
class Process:
    """What one serving process holds."""

    store: RedisStore
    center: KnowledgeCenter
    metrics: GkcMetrics
    monitor: HealthMonitor


def build_process(settings: GkcSettings, url: str, metrics_dir: str | None = None) -> Process:
    store = RedisStore(url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s)
    metrics = GkcMetrics(metrics_dir)
    center = KnowledgeCenter(
        store,
        max_candidates=settings.max_candidates,
        cache_bytes=settings.cache_bytes,
        registry_ttl_s=settings.registry_ttl_s,
        registry_stale_s=settings.registry_stale_s,
        observer=metrics.observe,
    )
    metrics.watch_cache(center.cache)
    monitor = HealthMonitor(store, center.view, accept_eviction=settings.accept_eviction)
    return Process(store, center, metrics, monitor)


async def _grpc(settings: GkcSettings, proc: Process, stop: asyncio.Event) -> None:
    servicer = GkcServicer(proc.center, proc.metrics, threads=settings.read_threads)
    server, health = build_server([register(servicer)], [SERVICE_NAME], so_reuseport=settings.workers > 1)
    add_port(server, f"{settings.host}:{settings.grpc_port}", settings.tls_cert, settings.tls_key)
    loop = asyncio.get_running_loop()

    async def follow(problem: str | None) -> None:
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING if problem else health_pb2.HealthCheckResponse.SERVING
        )
        if not stop.is_set():
            for name in ("", SERVICE_NAME):
                await health.set(name, status)

    def on_change(problem: str | None) -> None:  # called from the monitor's thread
        if problem is not None:
            servicer.pool_for(POOLED_S)
        asyncio.run_coroutine_threadsafe(follow(problem), loop)

    proc.monitor.state.listeners.append(on_change)
    _settle_gc()
    await server.start()
    await follow(proc.monitor.state.problem)
    proc.monitor.start()
    await stop.wait()
    proc.monitor.stop()
    await graceful_stop(server, health)
    servicer.pool.shutdown(wait=False)


def _settle_gc() -> None:
    """Take everything built at start-up (modules, app, settings) out of the collector's sight.

    A full collection walks every tracked object: with ~80k start-up objects it paused a worker for
    70-100 ms under load, in the middle of serving. After ``gc.freeze()`` only objects made since
    are scanned; the young-generation threshold goes up too, since a request's garbage is freed by
    reference counting and what survives is mostly long-lived (cache keys, metric children).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _start_checks(settings: GkcSettings, url: str, shadow: Shadow) -> list[str]:
    """Before serving: the store must be fit (eviction policy) and every ready version intact."""
    store = RedisStore(url, cluster=settings.redis_cluster, timeout_s=max(settings.redis_timeout_s, 5.0))
    try:
        problem = fitness_problem(store.memory(), settings.accept_eviction)
        if problem is not None:
            raise Unavailable(problem)
        return reconcile(store, shadow)
    finally:
        store.close()


async def _main(
    settings: GkcSettings,
    url: str,
    metrics_dir: str | None,
    shadow: Shadow,
    problems: int,
    workers: ProcessGroup,
) -> None:
    stop = asyncio.Event()
    _install_stop(stop)
    proc = build_process(settings, url, metrics_dir)
    store, metrics = proc.store, proc.metrics
    metrics.integrity_problems.inc(problems)
    metrics.worker_restarts.inc(workers.restarts())
    workers.on_restart = lambda *_: metrics.worker_restarts.inc()
    janitor = Janitor(
        store,
        lease_s=settings.publish_lease_s,
        delete_after_s=settings.delete_after_s,
        shadow=shadow,
        on_damaged=lambda lines: metrics.integrity_problems.inc(len(lines)),
    ).start()
    limits = PublishLimits(
        max_upload_bytes=settings.max_upload_bytes,
        batch=settings.publish_batch,
        writers=settings.publish_writers,
        max_ready=settings.max_ready_versions,
        replica_timeout_s=settings.replica_timeout_s,
        max_pin_ttl_s=settings.max_pin_ttl_s,
    )
    ops = VersionOps(store, proc.center.view, limits, janitor=janitor, shadow=shadow)
    metrics.watch_registry(store.records, lambda: proc.monitor.state.memory, lambda: proc.monitor.state.ok)
    http = http_server(create_app(settings, ops, metrics, proc.monitor), settings, settings.http_port)
    http_task = asyncio.create_task(http.serve())
    grpc_task = asyncio.create_task(_grpc(settings, proc, stop))
    log.info(
        "GKC serving gRPC on %s:%d and REST on %s:%d (%d gRPC workers, redis %s)",
        settings.host,
        settings.grpc_port,
        settings.host,
        settings.http_port,
        settings.workers,
        "embedded" if settings.redis_url is None else "external",
    )
    done, _ = await asyncio.wait({http_task, grpc_task}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    http.should_exit = True
    await asyncio.gather(http_task, grpc_task, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    janitor.stop()
    store.close()


async def _worker_main(settings: GkcSettings, url: str, metrics_dir: str | None) -> None:
    stop = asyncio.Event()
    _install_stop(stop)
    await _grpc(settings, build_process(settings, url, metrics_dir), stop)


def _worker(settings_json: str, url: str, metrics_dir: str | None) -> None:
    settings = GkcSettings.model_validate_json(settings_json)
    setup_logging(settings.log_level, settings.log_json)
    if metrics_dir is not None:
        enable_multiprocess(metrics_dir, clean=False)
    asyncio.run(_worker_main(settings, url, metrics_dir))


def run(settings: GkcSettings) -> None:
    """Run until SIGTERM / SIGINT."""
    settings.check()
    require_free(
        settings.host, [(settings.grpc_port, "GKC_GRPC_PORT"), (settings.http_port, "GKC_HTTP_PORT")]
    )
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir).start()
        url = embedded.url
        log.info("embedded redis at %s (data in %s)", url, settings.data_dir)
    cleanup = contextlib.ExitStack()
    # every process writes its metrics under one directory; /metrics (main process) sums them
    metrics_dir = cleanup.enter_context(multiprocess_dir("gkc-metrics-")) if settings.workers > 1 else None
    # model_dump_json hides secrets; workers do not need the token (they only serve gRPC reads).
    payload = settings.model_dump_json()
    workers = ProcessGroup("gkc", settings.workers, _worker, lambda _: (payload, url, metrics_dir))
    try:
        shadow = Shadow.open(settings.data_dir)
        problems = _start_checks(settings, url, shadow)
        workers.start()  # supervised: a dead worker is started again (services.supervisor)
        asyncio.run(_main(settings, url, metrics_dir, shadow, len(problems), workers))
    finally:
        workers.stop()
        if embedded is not None:
            embedded.stop()
        cleanup.close()
        log.info("GKC stopped")


def serve(settings: GkcSettings) -> int:
    """Entry point for ``keep serve gkc`` and ``python -m gkc`` (settings built by the caller)."""
    setup_logging(settings.log_level, settings.log_json)
    run(settings)
    return 0
