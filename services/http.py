"""What every KEEP HTTP front shares (FastAPI): one error body, one bearer check, request timing and
a uvicorn runner that leaves signals to the service.

- :func:`install_errors`: :class:`services.errors.KeepError` → ``{"error": reason, "code": GRPC_CODE}``
  with its HTTP status (an :class:`~services.errors.Overloaded` refusal adds ``Retry-After``), and
  FastAPI's request validation errors → 422 in the same shape (one line per field), so a client parses
  one body for every refusal.
- :class:`BearerToken`: a dependency that checks ``Authorization: Bearer <token>`` in constant time; a
  missing or placeholder token (:func:`services.settings.is_placeholder`) refuses every request unless
  the service runs in dev mode, where ``dev`` is the token.
- :func:`install_timing`: observes each request's latency by route template and status.
- :class:`Uvicorn` / :func:`uvicorn_config`: the server, without uvicorn's own signal handling.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr

from services.errors import InvalidArgument, KeepError, Overloaded, Unauthenticated
from services.settings import ServiceSettings, is_placeholder

#: The token of a dev-mode service that has none configured (never accepted outside dev mode).
DEV_TOKEN = "dev"


def error_body(err: KeepError) -> dict[str, str]:
    return {"error": err.message, "code": err.grpc_code}


def install_errors(app: FastAPI) -> None:
    @app.exception_handler(KeepError)
    async def keep_error(_: Request, err: KeepError) -> JSONResponse:
        headers = None
        if isinstance(err, Overloaded):  # when to come back, in whole seconds (RFC 9110)
            headers = {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}
        return JSONResponse(error_body(err), status_code=err.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            lines.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
        refusal = InvalidArgument("; ".join(lines) or "invalid request")
        return JSONResponse(error_body(refusal), status_code=refusal.http_status)


class BearerToken:
    """FastAPI dependency: ``Depends(BearerToken(token, dev_mode=...))`` on every write route."""

    def __init__(self, token: SecretStr | str | None, *, dev_mode: bool = False, name: str = "token") -> None:
        secret = token if isinstance(token, SecretStr) or token is None else SecretStr(token)
        if not is_placeholder(secret):
            assert secret is not None
            self._token = secret.get_secret_value().encode()
        elif dev_mode:
            self._token = (
                secret.get_secret_value() if secret is not None and secret.get_secret_value() else DEV_TOKEN
            ).encode()
        else:
            self._token = b""  # no usable token: every request is refused
        self.name = name

    def __call__(self, request: Request) -> None:
        self.check(request.headers.get("authorization", ""))

    def check(self, header: str) -> None:
        """The same check on an ``Authorization`` value from elsewhere (gRPC metadata)."""
        scheme, _, given = header.partition(" ")
        if (
            scheme.lower() != "bearer"
            or not self._token
            or not hmac.compare_digest(given.encode(), self._token)
        ):
            raise Unauthenticated(
                f"missing or wrong bearer token (send 'Authorization: Bearer <{self.name}>')"
            )


def install_timing(app: FastAPI, observe: Callable[[str, str, float], None]) -> None:
    """``observe(route, status, seconds)`` per request; ``route`` is ``"GET /v1/x/{id}"`` (the template)."""

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        status = "500"
        try:
            response: Response = await call_next(request)
            status = str(response.status_code)
            return response
        finally:
            route = request.scope.get("route")
            observe(
                f"{request.method} {getattr(route, 'path', 'unmatched')}", status, time.perf_counter() - start
            )


class Uvicorn(uvicorn.Server):
    """Uvicorn without its own signal handling: the service process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(app: FastAPI, settings: ServiceSettings, port: int) -> Uvicorn:
    """The service's REST server on ``settings.host:port`` (TLS when ``settings.tls_cert`` is set)."""
    return Uvicorn(
        uvicorn_config(
            app,
            settings.host,
            port,
            log_level=settings.log_level,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
        )
    )


def uvicorn_config(
    app: FastAPI,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        # an idle keep-alive (TLS) connection otherwise holds the shutdown open
        timeout_graceful_shutdown=5,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
