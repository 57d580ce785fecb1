"""Prometheus helpers shared by the services.

Each service owns a ``CollectorRegistry`` (so two services in one test process do not collide) and
exposes it with :func:`render`. Latency buckets are tuned for sub-millisecond to second requests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, values

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


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(path: str | os.PathLike[str], *, clean: bool) -> Path:
    """Switch this process' metric values to mmap files under ``path`` (before any metric is made):
    prometheus_client's multiprocess mode, for a service serving from several processes whose
    ``/metrics`` sums them.

    ``clean=True`` (the main process, once per run) deletes the directory's ``*.db`` files first so
    that counts of an earlier run or of dead processes are not summed in. The path goes to
    ``os.environ`` so that worker processes spawned afterwards inherit it.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if clean:
        for old in root.glob("*.db"):
            old.unlink()
    os.environ[MULTIPROC_ENV] = str(root)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return root


@contextlib.contextmanager
def multiprocess_dir(prefix: str) -> Iterator[str]:
    """The directory every serving process of a multi-process service writes its metrics to:
    ``PROMETHEUS_MULTIPROC_DIR`` when set, else a private one removed on exit; switched on (and
    cleaned) in this process, which must not have made a metric yet."""
    path = os.environ.get(MULTIPROC_ENV)
    own = not path
    if not path:
        path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield str(enable_multiprocess(path, clean=True))
    finally:
        if own:
            shutil.rmtree(path, ignore_errors=True)
