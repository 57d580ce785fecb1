"""Domain errors that carry their own gRPC and HTTP status.

The core raises these; one gRPC interceptor and one FastAPI exception handler map them to the wire
(Feast ``errors.py`` style), so no servicer or route has its own ``try/except`` ladder. The gRPC code is
kept as the ``grpc.StatusCode`` *name* so that this module does not import grpc.
"""

from __future__ import annotations

from typing import ClassVar


class KeepError(Exception):
    """Base class: a message for humans plus the codes for both transports."""

    grpc_code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(KeepError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 422


class NotFound(KeepError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class Conflict(KeepError):
    """The request is valid but the current state forbids it (e.g. deleting the active version)."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 409


class ResourceExhausted(KeepError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 413


class Overloaded(ResourceExhausted):
    """The server is at capacity (its queue is full, or the wait for a slot would outlast the request):
    refused at once rather than answered late or degraded. HTTP 503 with ``Retry-After``."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsufficientStorage(ResourceExhausted):
    """The store has no room for what is asked (a publish that does not fit, Redis out of memory)."""

    http_status = 507


class Unauthenticated(KeepError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class Unavailable(KeepError):
    """A dependency (Redis, GKC) is down or too slow; the caller may retry."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


class DeadlineExceeded(KeepError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504
