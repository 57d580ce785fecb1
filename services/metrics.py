"""Prometheus helpers shared by the services.

Each service owns a ``CollectorRegistry`` (so two services in one test process do not collide) and
exposes it with :func:`render`. Latency buckets are tuned for sub-millisecond to second requests.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: Seconds; dense below 10 ms where the GKC and ranker live.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: Candidates per request.
SIZE_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition body and its content type, for a ``/metrics`` route."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
