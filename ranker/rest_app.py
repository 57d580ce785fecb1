"""The REST front (FastAPI) for callers without gRPC, plus health, metrics and model admin.

- ``POST /v1/rank``: ``{"user_id": "u1", "candidates": [{"item_id": "i1", "category_id": "c1",
  "shop_id": "s1"?}, ...], "model": "click"?}`` → ``{"scores": [...], "model", "model_revision",
  "knowledge_version", "degraded", "degraded_reason", "unknown_items", "history_len"}``: unknown ids
  are scored (an unseen item from its category, an unknown user as a cold user) and counted, never
  silently. Ids may be JSON strings or integers.
- ``GET /healthz``: 200 with the loaded models and breaker state (``status`` ``ok``, or ``degraded``
  while the breaker is open and answers come from the base model), 503 while no model is loaded.
- ``GET /metrics``: Prometheus exposition.
- ``GET /v1/models``; ``POST /v1/models/reload`` (bearer ``RANKER_ADMIN_TOKEN``; without a token the
  call is open only while the ranker listens on loopback); with several serving processes it answers
  once every one has reloaded (``ranker.workers``).
- ``POST /v1/events`` (bearer ``RANKER_EVENTS_TOKEN``): ``{"events": [{"event_id": "e1", "user_id": "u1",
  "item_id": "i1", "category_id": "c1", "ts": 1733150000.5?}, ...]}`` → ``{"received", "recorded"}``;
  ``ts`` absent = now; a redelivered ``event_id`` is not recorded again (``recorded`` counts the new ones).

Errors: ``{"error": reason, "code": GRPC_CODE}`` with the error's HTTP status (invalid request or a
malformed body 422, unknown model 404), the same body as GKC's (:func:`services.http.install_errors`).
Ids given as ``NaN`` / ``Infinity`` / ``1e400`` are 422 too (FastAPI's own handler echoed the
input and failed to encode NaN: a 500).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ranker.history import ClickEvent
from ranker.metrics import observed
from ranker.service import RankerService, RankQuery
from services.errors import KeepError, Unauthenticated
from services.http import BearerToken, install_errors
from services.metrics import render


class CandidateIn(BaseModel):
    item_id: str | int
    category_id: str | int
    shop_id: str | int | None = None


class RankIn(BaseModel):
    user_id: str | int
    candidates: list[CandidateIn]
    model: str = ""


class EventIn(BaseModel):
    event_id: str
    user_id: str | int
    item_id: str | int
    category_id: str | int
    ts: float | None = None


class EventsIn(BaseModel):
    events: list[EventIn]


class EventsOut(BaseModel):
    received: int
    recorded: int


class RankOut(BaseModel):
    scores: list[float]
    model: str
    model_revision: str
    knowledge_version: int
    degraded: bool
    degraded_reason: str
    #: Candidates whose item id the model never saw (scored from their category and the history).
    unknown_items: int = 0
    #: The user's clicks the ranker knows; 0 = an unknown (cold) user.
    history_len: int = 0


def _reload_closed() -> None:
    raise Unauthenticated(
        "POST /v1/models/reload is disabled: RANKER_ADMIN_TOKEN is unset and the ranker listens beyond "
        "loopback; set a token"
    )


def create_app(
    service: RankerService,
    admin_token: str | None = None,
    events_auth: BearerToken | None = None,
    *,
    reload_open: bool = True,
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    """``admin_token``: bearer token of ``POST /v1/models/reload``; without one the call is open only
    when ``reload_open`` (the ranker listens on loopback only), else refused. ``reload``: what that call
    does (default: rescan this process' model dir; a ranker with several processes reloads them all)."""
    app = FastAPI(title="KEEP ranker", version="1")
    metrics = service.metrics
    events_auth = events_auth or BearerToken(None, name="RANKER_EVENTS_TOKEN")

    install_errors(app)
    if admin_token:
        admin = [Depends(BearerToken(admin_token, name="RANKER_ADMIN_TOKEN"))]
    elif reload_open:
        admin = []
    else:
        admin = [Depends(_reload_closed)]

    @app.post("/v1/rank", response_model=RankOut)
    async def rank(body: RankIn) -> RankOut:
        started = time.perf_counter()
        code = "OK"
        try:
            cands = body.candidates
            shops = [str(c.shop_id) if c.shop_id is not None else "" for c in cands]
            ranking = await service.rank(
                RankQuery(
                    user_id=str(body.user_id),
                    item_ids=[str(c.item_id) for c in cands],
                    category_ids=[str(c.category_id) for c in cands],
                    shop_ids=shops if any(shops) else [],
                    model=body.model,
                )
            )
        except KeepError as err:
            code = err.grpc_code
            raise
        finally:
            if metrics is not None:
                metrics.observe_request("http", "Rank", code, time.perf_counter() - started)
        return RankOut(
            scores=ranking.scores.tolist(),
            model=ranking.model,
            model_revision=ranking.revision,
            knowledge_version=ranking.knowledge_version,
            degraded=ranking.degraded,
            degraded_reason=ranking.reason,
            unknown_items=ranking.unknown_items,
            history_len=ranking.history_len,
        )

    @app.post("/v1/events", response_model=EventsOut, dependencies=[Depends(events_auth)])
    async def record_events(body: EventsIn) -> EventsOut:
        with observed(metrics, "http", "RecordEvents"):
            now = service.wall()
            events = [
                ClickEvent(
                    e.event_id,
                    str(e.user_id),
                    str(e.item_id),
                    str(e.category_id),
                    now if e.ts is None else e.ts,
                )
                for e in body.events
            ]
            recorded = await service.record_events(events, "http")
            return EventsOut(received=len(events), recorded=recorded)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        health = service.health()
        # "degraded" (GKC down, breaker open) stays 200: the ranker still answers, and every replica
        # would be degraded alike, so a balancer must not take them out
        return JSONResponse(health, status_code=503 if health["status"] == "no_models" else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = render(metrics.registry) if metrics is not None else (b"", "text/plain")
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        registry = service.registry
        return {
            "default": registry.default_name() or None,
            "models": [m.describe() for m in registry.snapshots()],
        }

    @app.post("/v1/models/reload", dependencies=admin)
    async def reload_models() -> dict[str, Any]:
        if reload is not None:
            return await reload()
        return await asyncio.get_running_loop().run_in_executor(None, service.registry.reload)

    return app
