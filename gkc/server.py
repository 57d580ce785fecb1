"""``keep serve gkc``: gRPC reads + REST ops in one process, plus optional extra gRPC worker processes.

Process layout: the main process owns the embedded Redis (when ``GKC_REDIS_URL`` is unset), the REST
API, the janitor and gRPC worker 0; ``GKC_WORKERS - 1`` more processes serve gRPC on the same port
(SO_REUSEPORT lets the kernel spread connections). SIGTERM / SIGINT: health goes NOT_SERVING, in-flight
calls finish, workers stop, then Redis is shut down cleanly (it writes its AOF/RDB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn

from gkc.core import KnowledgeCenter
from gkc.grpc_service import SERVICE_NAME, GkcServicer, register
from gkc.local_redis import EmbeddedRedis
from gkc.metrics import MULTIPROC_ENV, GkcMetrics, enable_multiprocess
from gkc.publish import Janitor
from gkc.redis_store import RedisStore
from gkc.rest import create_app
from gkc.settings import GkcSettings
from services.grpc_server import build_server, graceful_stop, mark_serving
from services.logging import setup_logging

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """Uvicorn without its own signal handling: the GKC process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_center(
    settings: GkcSettings, url: str, metrics_dir: str | None = None
) -> tuple[RedisStore, KnowledgeCenter, GkcMetrics]:
    store = RedisStore(url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s)
    metrics = GkcMetrics(metrics_dir)
    center = KnowledgeCenter(
        store,
        max_candidates=settings.max_candidates,
        cache_items=settings.cache_items,
        registry_ttl_s=settings.registry_ttl_s,
        observer=metrics.observe,
    )
    metrics.watch(center)
    return store, center, metrics


async def _grpc(
    settings: GkcSettings, center: KnowledgeCenter, metrics: GkcMetrics, stop: asyncio.Event
) -> None:
    server, health = build_server(
        [register(GkcServicer(center, metrics))], [SERVICE_NAME], so_reuseport=settings.workers > 1
    )
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key:
        import grpc

        creds = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    _settle_gc()
    await server.start()
    await mark_serving(health, [SERVICE_NAME])
    await stop.wait()
    await graceful_stop(server, health)


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


async def _main(settings: GkcSettings, url: str, metrics_dir: str | None) -> None:
    stop = asyncio.Event()
    _install_stop(stop)
    store, center, metrics = build_center(settings, url, metrics_dir)
    janitor = Janitor(store, lease_s=settings.publish_lease_s).start()
    app = create_app(settings, store, center, metrics, janitor)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # an idle keep-alive TLS connection otherwise holds the shutdown open (and Redis with it)
        timeout_graceful_shutdown=5,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    http = _Uvicorn(config)
    http_task = asyncio.create_task(http.serve())
    grpc_task = asyncio.create_task(_grpc(settings, center, metrics, stop))
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
    _, center, metrics = build_center(settings, url, metrics_dir)
    await _grpc(settings, center, metrics, stop)


def _worker(settings_json: str, url: str, metrics_dir: str | None) -> None:
    settings = GkcSettings.model_validate_json(settings_json)
    setup_logging(settings.log_level, settings.log_json)
    if metrics_dir is not None:
        enable_multiprocess(metrics_dir, clean=False)
    asyncio.run(_worker_main(settings, url, metrics_dir))


def run(settings: GkcSettings) -> None:
    """Run until SIGTERM / SIGINT."""
    settings.check()
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir).start()
        url = embedded.url
        log.info("embedded redis at %s (data in %s)", url, settings.data_dir)
    workers: list[Any] = []
    metrics_dir, own_dir = None, False
    if settings.workers > 1:
        # every process writes its metrics under one directory; /metrics (main process) sums them
        metrics_dir = os.environ.get(MULTIPROC_ENV)
        if not metrics_dir:
            metrics_dir, own_dir = tempfile.mkdtemp(prefix="gkc-metrics-"), True
        enable_multiprocess(metrics_dir, clean=True)
    try:
        ctx = mp.get_context("spawn")
        payload = settings.model_dump_json()
        # model_dump_json hides secrets; workers do not need the token (they only serve gRPC reads).
        for _ in range(settings.workers - 1):
            proc = ctx.Process(target=_worker, args=(payload, url, metrics_dir), daemon=True)
            proc.start()
            workers.append(proc)
        asyncio.run(_main(settings, url, metrics_dir))
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(10)
        if embedded is not None:
            embedded.stop()
        if own_dir and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("GKC stopped")


def serve(args: argparse.Namespace) -> int:
    """Entry point for ``keep serve gkc`` (settings from ``GKC_*``)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    settings = GkcSettings(**overrides)
    setup_logging(settings.log_level, settings.log_json)
    run(settings)
    return 0
