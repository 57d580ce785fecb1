"""GKC's REST ops API (FastAPI): publish, list, activate and delete versions; health; metrics.

Upload format for ``POST /v1/versions``: the bundle directory as an uncompressed tar stream in the
request body (``Content-Type: application/x-tar``; files at the top level or under one folder). The
body is streamed to a temp dir with a size cap, extracted with a whitelist of file names, then fully
verified (:func:`gkc.bundle.load`: dims, dtypes, counts, checksums) before anything is written to
Redis: a corrupt bundle is a 422 with the reason and leaves existing versions untouched.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from gkc import bundle as gkc_bundle
from gkc.core import KnowledgeCenter
from gkc.metrics import GkcMetrics
from gkc.publish import Janitor, publish
from gkc.settings import GkcSettings
from gkc.store import READY, KnowledgeStore
from services.errors import (
    InvalidArgument,
    KeepError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.metrics import render

log = logging.getLogger(__name__)
DEV_TOKEN = "dev"
ALLOWED_FILES = {gkc_bundle.MANIFEST, *gkc_bundle.ARRAY_FILES}


def extract_bundle_tar(tar_path: Path, dest: Path) -> Path:
    """Extract only the bundle's known regular files (no links, no paths outside ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isdir():
                    continue
                if not member.isfile() or name not in ALLOWED_FILES or name in seen:
                    raise gkc_bundle.BundleError(f"unexpected entry in the bundle upload: {member.name!r}")
                src = tar.extractfile(member)
                assert src is not None
                with src, (dest / name).open("wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                seen.add(name)
    except (tarfile.TarError, EOFError) as err:
        raise gkc_bundle.BundleError(f"the upload is not a readable tar stream: {err}") from err
    missing = ALLOWED_FILES - seen
    if missing:
        raise gkc_bundle.BundleError(f"the upload lacks {sorted(missing)} (truncated?)")
    return dest


def create_app(
    settings: GkcSettings,
    store: KnowledgeStore,
    center: KnowledgeCenter,
    metrics: GkcMetrics,
    janitor: Janitor | None = None,
) -> FastAPI:
    app = FastAPI(title="KEEP GKC ops API", version="1")
    publish_lock = threading.Lock()
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value().encode()
    else:
        #: Dev mode without a token: writes take the placeholder "dev" (never outside dev mode).
        token = DEV_TOKEN.encode() if settings.dev_mode else b""

    @app.exception_handler(KeepError)
    async def keep_error(_: Request, err: KeepError) -> JSONResponse:
        return JSONResponse({"error": err.message, "code": err.grpc_code}, status_code=err.http_status)

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.latency.labels(f"{request.method} {path}", str(response.status_code)).observe(
            time.perf_counter() - start
        )
        return response

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(given.encode(), token):
            raise Unauthenticated("missing or wrong bearer token")

    def listing(include_all: bool) -> dict[str, Any]:
        records, active = center.refresh()
        shown = [r.to_json(active) for r in records if include_all or r.state == READY]
        return {"versions": shown, "active": active}

    def one(version: int) -> dict[str, Any]:
        records, active = center.refresh()
        for r in records:
            if r.version == version:
                return r.to_json(active)
        raise NotFound(f"version {version} does not exist")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        try:
            await run_in_threadpool(store.ping)
        except Unavailable as err:
            return JSONResponse({"status": "unavailable", "error": err.message}, status_code=503)  # type: ignore[return-value]
        return {"status": "ok", "active": center.active}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        await run_in_threadpool(_safe_refresh, center)
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    @app.get("/v1/versions")
    async def list_versions(all: bool = False) -> dict[str, Any]:
        return await run_in_threadpool(listing, all)

    @app.get("/v1/versions/{version}")
    async def get_version(version: int) -> dict[str, Any]:
        return await run_in_threadpool(one, version)

    @app.post("/v1/versions/{version}/activate", dependencies=[Depends(require_token)])
    async def activate(version: int) -> dict[str, Any]:
        await run_in_threadpool(store.activate, version)
        await run_in_threadpool(_safe_refresh, center)
        log.info("activated version %d", version)
        return await run_in_threadpool(one, version)

    @app.delete("/v1/versions/{version}", dependencies=[Depends(require_token)])
    async def delete(version: int) -> dict[str, Any]:
        await run_in_threadpool(store.retire, version)
        await run_in_threadpool(_safe_refresh, center)
        if janitor is not None:
            janitor.kick()
        log.info("retired version %d", version)
        return {"version": version, "state": "retiring"}

    @app.post("/v1/versions", status_code=201, dependencies=[Depends(require_token)])
    async def publish_version(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > settings.max_upload_bytes:
            raise ResourceExhausted(f"upload of {declared} bytes exceeds {settings.max_upload_bytes}")
        with tempfile.TemporaryDirectory(prefix="gkc-upload-") as tmp:
            tar_path = Path(tmp) / "bundle.tar"
            size = 0
            with tar_path.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise ResourceExhausted(f"upload exceeds {settings.max_upload_bytes} bytes")
                    out.write(chunk)
            if size == 0:
                raise InvalidArgument("empty upload: send the bundle directory as a tar stream")
            result = await run_in_threadpool(_publish_tar, tar_path, Path(tmp) / "bundle")
        if janitor is not None:
            janitor.kick()
        center.refresh()
        return {"version": result.version, "retired": result.retired, "entries": result.entries}

    def _publish_tar(tar_path: Path, dest: Path) -> Any:
        bundle = gkc_bundle.load(extract_bundle_tar(tar_path, dest))
        with publish_lock:
            return publish(
                store,
                bundle,
                batch=settings.publish_batch,
                max_ready=settings.max_ready_versions,
                progress=False,
            )

    return app


def _safe_refresh(center: KnowledgeCenter) -> None:
    with contextlib.suppress(Unavailable):
        center.refresh()
