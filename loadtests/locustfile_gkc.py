"""Locust users for GKC: gRPC ``BatchGet`` readers and a REST ops poller.

Run by ``loadtests/run.py`` (``make load``), which starts the suite and passes the targets in the
environment:

- ``KEEP_LOAD_GKC_GRPC``: ``host:port`` of GKC's gRPC read path (``--host`` is the REST base URL).
- ``KEEP_LOAD_VERSIONS``: comma-separated published versions to pin (0, the active one, is added).
- ``KEEP_LOAD_USERS`` / ``KEEP_LOAD_ITEMS`` / ``KEEP_LOAD_CATEGORIES``: id space sizes (ids ``u<n>`` ...).

The mix: candidate counts log-uniform in [50, 1000], users and items drawn from a Zipf law (s = 1.1:
a few hot ids and a long tail, as in impression logs), versions pinned at random across the published
ones and the active one. gRPC is made cooperative with gevent (``grpc.experimental.gevent``), and each
call fires a Locust ``request`` event so it lands in the same stats, CSV and HTML report as HTTP.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import FastHttpUser, User, between, task

from protos import gkc_pb2, gkc_pb2_grpc

grpc_gevent.init_gevent()

MIN_CANDIDATES, MAX_CANDIDATES = 50, 1000
ZIPF_S = 1.1


class ZipfIds:
    """Sample ``prefix<k>`` ids with P(rank k) ∝ 1 / k^s, k in [0, n); the hot ranks are shuffled."""

    def __init__(self, prefix: str, n: int, rng: np.random.Generator, s: float = ZIPF_S) -> None:
        weights = 1.0 / np.arange(1, n + 1) ** s
        self.cdf = np.cumsum(weights) / weights.sum()
        self.ids = np.array([f"{prefix}{k}" for k in rng.permutation(n)])
        self.rng = rng

    def sample(self, count: int) -> list[str]:
        ranks = np.searchsorted(self.cdf, self.rng.random(count), side="right")
        return self.ids[np.minimum(ranks, len(self.ids) - 1)].tolist()


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def id_spaces(rng: np.random.Generator) -> tuple[ZipfIds, ZipfIds, ZipfIds]:
    """Users, items and categories of the load mix (sizes from ``KEEP_LOAD_USERS`` / ``_ITEMS`` /
    ``_CATEGORIES``)."""
    return (
        ZipfIds("u", env_int("KEEP_LOAD_USERS", 5000), rng),
        ZipfIds("i", env_int("KEEP_LOAD_ITEMS", 20000), rng),
        ZipfIds("c", env_int("KEEP_LOAD_CATEGORIES", 50), rng),
    )


def candidate_count(rng: np.random.Generator, top: int = MAX_CANDIDATES) -> int:
    """Log-uniform in [MIN_CANDIDATES, top]."""
    top = max(top, MIN_CANDIDATES)
    n = int(np.exp(rng.uniform(np.log(MIN_CANDIDATES), np.log(top + 1))))
    return min(max(n, MIN_CANDIDATES), top)


def timed_call(
    user: User, name: str, call: Any, request: Any, context: Callable[[Any], dict[str, Any]]
) -> None:
    """Call ``call(request)`` and fire one Locust ``request`` event for it (failed on a gRPC error);
    ``context(response or None)`` goes into the event's context."""
    start = time.perf_counter()
    exception: Exception | None = None
    response: Any = None
    try:
        response = call(request, timeout=2.0)
    except grpc.RpcError as err:
        exception = err
    fire: Any = user.environment.events.request.fire
    fire(
        request_type="grpc",
        name=name,
        response_time=(time.perf_counter() - start) * 1000.0,
        response_length=response.ByteSize() if response is not None else 0,
        exception=exception,
        context=context(response),
    )


class GkcGrpcUser(User):
    """One ranker replica's worth of ``BatchGet`` traffic."""

    weight = 10
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        rng = np.random.default_rng(id(self) % (2**32))
        self.rng = rng
        self.users, self.items, self.categories = id_spaces(rng)
        versions = [int(v) for v in os.environ.get("KEEP_LOAD_VERSIONS", "").split(",") if v]
        self.versions = [0, *versions]
        self.channel = grpc.insecure_channel(os.environ["KEEP_LOAD_GKC_GRPC"])
        self.call = gkc_pb2_grpc.GkcStub(self.channel).BatchGet

    def on_stop(self) -> None:
        self.channel.close()

    def _request(self) -> gkc_pb2.BatchGetRequest:
        n = candidate_count(self.rng)
        return gkc_pb2.BatchGetRequest(
            user_id=self.users.sample(1)[0],
            item_ids=self.items.sample(n),
            category_ids=self.categories.sample(n),
            version=int(self.rng.choice(self.versions)),
        )

    @task
    def batch_get(self) -> None:
        request = self._request()
        timed_call(self, "gkc.BatchGet", self.call, request, lambda _: {"candidates": len(request.item_ids)})


class GkcOpsUser(FastHttpUser):
    """An operator / dashboard polling the REST ops API (reads only: writes are ``run.py``'s job)."""

    weight = 1
    wait_time = between(0.2, 0.5)

    def on_start(self) -> None:
        self.versions = [int(v) for v in os.environ.get("KEEP_LOAD_VERSIONS", "").split(",") if v] or [1]
        self.rng = np.random.default_rng(id(self) % (2**32))

    @task(4)
    def list_versions(self) -> None:
        self.client.get("/v1/versions", name="ops GET /v1/versions")

    @task(2)
    def one_version(self) -> None:
        version = int(self.rng.choice(self.versions))
        self.client.get(f"/v1/versions/{version}", name="ops GET /v1/versions/{v}")

    @task(2)
    def healthz(self) -> None:
        self.client.get("/healthz", name="ops GET /healthz")

    @task(1)
    def metrics(self) -> None:
        self.client.get("/metrics", name="ops GET /metrics")
