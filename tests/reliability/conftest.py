"""Fixtures for tests/reliability: the GKC fixtures of tests/integration plus a latency proxy factory.

``tests`` is not a package, so the integration conftest is loaded by path in :mod:`faultkit` and its
fixtures are re-exported here by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from faultkit import LatencyProxy, integration

redis_server = integration.redis_server
gkc_service = integration.gkc_service
start_gkc = integration.start_gkc
make_bundle_fixture = integration.make_bundle_fixture


@pytest.fixture
def latency_proxy() -> Iterator[Callable[..., LatencyProxy]]:
    made: list[LatencyProxy] = []

    def make(target: tuple[str, int], delay_s: float = 0.0) -> LatencyProxy:
        proxy = LatencyProxy(target, delay_s)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
