"""The error interceptor reuses its wrapper for a registered handler and never mixes two handlers up."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from services.errors import NotFound
from services.grpc_server import ErrorInterceptor


class _Details:
    method = "/keep.test.v1.T/Call"


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def _handler(answer: str) -> grpc.RpcMethodHandler:
    async def call(request: Any, context: Any) -> str:
        if request == "missing":
            raise NotFound("no such thing")
        return f"{answer}:{request}"

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=bytes.decode)


def _intercept(interceptor: ErrorInterceptor, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    return asyncio.run(interceptor.intercept_service(continuation, _Details()))


def test_same_handler_gets_one_wrapper_and_fresh_handlers_get_their_own() -> None:
    interceptor = ErrorInterceptor()
    registered = _handler("a")
    first, second = _intercept(interceptor, registered), _intercept(interceptor, registered)
    assert first is second
    other = _intercept(interceptor, _handler("b"))
    assert other is not first
    request = other.request_deserializer(b"x")
    assert asyncio.run(other.unary_unary(request, _Context())) == "b:x"
    assert asyncio.run(first.unary_unary(first.request_deserializer(b"x"), _Context())) == "a:x"


def test_domain_error_becomes_its_status_code() -> None:
    wrapped = _intercept(ErrorInterceptor(), _handler("a"))
    context = _Context()
    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(wrapped.unary_unary("missing", context))
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "no such thing")
