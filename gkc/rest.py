"""GKC's REST ops API (FastAPI): routes that convert HTTP to :class:`gkc.operations.VersionOps` calls.

Publish, list, activate, delete and pin versions; health; metrics. Writes need the bearer token
(:class:`services.http.BearerToken`); errors are ``{"error": reason, "code": GRPC_CODE}``
(:func:`services.http.install_errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gkc.health import HealthMonitor
from gkc.metrics import GkcMetrics
from gkc.operations import MAX_HOLDER_CHARS, VersionOps
from gkc.settings import GkcSettings
from services.http import BearerToken, install_errors, install_timing
from services.metrics import render


class PinIn(BaseModel):
    holder: str = Field(min_length=1, max_length=MAX_HOLDER_CHARS, description="who holds the lease")
    ttl_s: float = Field(60.0, description="the lease ends unless renewed within this many seconds")
    publish_id: str = Field("", max_length=64, description="refuse (409) unless the version is this publish")


def create_app(
    settings: GkcSettings, ops: VersionOps, metrics: GkcMetrics, monitor: HealthMonitor
) -> FastAPI:
    app = FastAPI(title="KEEP GKC ops API", version="1")
    install_errors(app)
    install_timing(app, lambda route, status, s: metrics.latency.labels(route, status).observe(s))
    auth = [Depends(BearerToken(settings.api_token, dev_mode=settings.dev_mode, name="GKC_API_TOKEN"))]

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Checked now (the same checks that drive gRPC health), not a cached verdict."""
        await run_in_threadpool(monitor.check)
        health = monitor.state
        body: dict[str, Any] = {"status": "ok" if health.ok else "unavailable", "active": ops.view.active}
        if health.problem is not None:
            body["error"] = health.problem
        if health.memory is not None:
            m = health.memory
            body["redis"] = {
                "used_bytes": m.used_bytes,
                "limit_bytes": m.limit_bytes,
                "free_bytes": m.free_bytes,
            }
        return JSONResponse(body, status_code=200 if health.ok else 503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    @app.get("/v1/auth", dependencies=auth)
    async def check_token() -> dict[str, Any]:
        """A cheap authenticated request: clients check their token here before a long upload."""
        return {"ok": True}

    @app.get("/v1/versions")
    async def list_versions(all: bool = False) -> dict[str, Any]:
        return await run_in_threadpool(ops.listing, all)

    @app.get("/v1/versions/{version}")
    async def get_version(version: int) -> dict[str, Any]:
        return await run_in_threadpool(ops.one, version)

    @app.post("/v1/versions/{version}/activate", dependencies=auth)
    async def activate(version: int) -> dict[str, Any]:
        return await run_in_threadpool(ops.activate, version)

    @app.delete("/v1/versions/{version}", dependencies=auth)
    async def delete(version: int) -> dict[str, Any]:
        return await run_in_threadpool(ops.delete, version)

    @app.post("/v1/versions", status_code=201, dependencies=auth)
    async def publish_version(request: Request, dtype: str | None = None) -> dict[str, Any]:
        """``?dtype=float16|int8``: store a float32 bundle at that dtype (docs/gkc.md, Stored dtypes)."""
        return await ops.publish_upload(request.stream(), request.headers.get("content-length"), dtype)

    @app.put("/v1/versions/{version}/pins", dependencies=auth)
    async def pin(version: int, body: PinIn) -> dict[str, Any]:
        """Create or renew a lease: GKC never retires a version while a lease on it is live."""
        pinned = await run_in_threadpool(ops.pin, version, body.holder, body.ttl_s, body.publish_id)
        return pinned.to_json()

    @app.delete("/v1/versions/{version}/pins/{holder}", dependencies=auth)
    async def unpin(version: int, holder: str) -> dict[str, Any]:
        return await run_in_threadpool(ops.unpin, version, holder)

    return app
