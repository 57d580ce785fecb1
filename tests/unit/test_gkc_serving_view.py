"""A serving process' view of the registry answers a version published just after its last read (it
read again instead of answering NOT_FOUND), and requests for unknown versions do not flood the registry."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gkc.bundle import Dims
from gkc.serving_view import FORCED_READ_GAP_S, ServingView
from gkc.store import READY, RegistryView, VersionIdentity, VersionRecord
from services.errors import NotFound


def record(version: int) -> VersionRecord:
    identity = VersionIdentity(version, f"{version:016d}", "c" * 64)
    return VersionRecord(identity, READY, f"ns{version}:", Dims(user=2, item=2, uc=2))


class Registry:
    def __init__(self) -> None:
        self.ready = [record(1)]
        self.reads = 0

    def view(self) -> RegistryView:
        self.reads += 1
        return RegistryView(tuple(self.ready), 1, "epoch")


def test_a_version_published_right_after_a_read_is_served() -> None:
    """CI caught a GKC worker answering NOT_FOUND for a version its publish had just reported ready: the
    worker's last read was under 50 ms old, so it did not read again."""
    registry = Registry()
    view = ServingView(registry, ttl_s=60.0)
    assert view.resolve(1).version == 1  # the first read
    registry.ready.append(record(2))  # published now, a few ms after that read
    assert view.resolve(2).version == 2
    assert registry.reads == 2


def test_unknown_versions_read_the_registry_at_most_once_per_gap() -> None:
    registry = Registry()
    view = ServingView(registry, ttl_s=60.0)
    view.resolve(1)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(view.resolve, 100 + k % 5) for k in range(40)]
    for future in futures:
        with pytest.raises(NotFound, match="does not exist or is not ready"):
            future.result()
    elapsed = time.monotonic() - started
    assert registry.reads - 1 <= elapsed / FORCED_READ_GAP_S + 2, (registry.reads, elapsed)
