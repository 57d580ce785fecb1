"""The ranker's Prometheus metrics, one registry per service instance (services.metrics).

Names are what ``deploy/grafana/dashboards/keep.json`` queries: ``keep_ranker_request_seconds``,
``keep_ranker_requests_total{code}``, ``keep_ranker_degraded_total``, ``keep_ranker_gkc_breaker_state``
(0 closed, 1 open, 2 half-open). ``keep_ranker_knowledge_coverage{model,kind}`` is the share of scored
candidates whose user / item / user_category knowledge GKC found (since start), the same share
``keep train`` and ``keep evaluate`` report (``trainer.coverage``); the two counters beside it give
the share over any window (``rate(found) / rate(candidates)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from ranker.breaker import BreakerState
from services.errors import KeepError
from services.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, new_registry

#: The kinds of :func:`ranker.knowledge.found_flags`' columns (``trainer.coverage.KINDS``).
COVERAGE_KINDS = ("user", "item", "user_category")


@contextlib.contextmanager
def observed(metrics: RankerMetrics | None, transport: str, method: str) -> Iterator[None]:
    """Time a call and count it under its status code (a ``KeepError``'s, ``INTERNAL`` for others)."""
    started = time.perf_counter()
    code = "OK"
    try:
        yield
    except KeepError as err:
        code = err.grpc_code
        raise
    except asyncio.CancelledError:  # the client went away (or its deadline passed): counted, not logged
        code = "CANCELLED"
        raise
    except Exception:
        code = "INTERNAL"
        raise
    finally:
        if metrics is not None:
            metrics.observe_request(transport, method, code, time.perf_counter() - started)


class RankerMetrics:
    """``multiprocess_dir``: set in every process of a ranker serving from several processes (after
    ``services.metrics.enable_multiprocess``); ``registry`` then exposes all of them, counters and
    histograms summed, gauges per process (a ``pid`` label)."""

    def __init__(self, multiprocess_dir: str | os.PathLike[str] | None = None) -> None:
        self.registry = r = new_registry()
        self.latency = Histogram(
            "keep_ranker_request_seconds",
            "Request latency by transport, method and status code",
            ["transport", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "keep_ranker_requests",
            "Requests by transport, method and status code",
            ["transport", "method", "code"],
            registry=r,
        )
        self.degraded = Counter(
            "keep_ranker_degraded",
            "Requests answered by the base model (no knowledge), by reason and model",
            ["reason", "model"],
            registry=r,
        )
        self.stage = Histogram(
            "keep_ranker_stage_seconds",
            "Time per request in each stage: features (sequence store read), gkc (BatchGet), "
            "model (encode + K̂ + forward, in the worker), handoff (to and from the worker thread), "
            "queue (waiting for an admission slot); features and gkc run concurrently",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.candidates = Histogram(
            "keep_ranker_candidates_per_request",
            "Candidates per Rank request",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "keep_ranker_gkc_breaker_state",
            "GKC circuit breaker: 0 closed, 1 open, 2 half-open",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.models_loaded = Gauge(
            "keep_ranker_models_loaded", "Models currently loaded", registry=r, multiprocess_mode="liveall"
        )
        self.model_info = Gauge(
            "keep_ranker_model_info",
            "1 per loaded model, labelled with its artifact revision and pinned knowledge version",
            ["model", "revision", "knowledge_version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.knowledge_candidates = Counter(
            "keep_ranker_knowledge_candidates",
            "Candidates scored with GKC knowledge, by model",
            ["model"],
            registry=r,
        )
        self.knowledge_found = Counter(
            "keep_ranker_knowledge_found",
            "Candidates whose knowledge of this kind (user, item, user_category) GKC found, by model",
            ["model", "kind"],
            registry=r,
        )
        self.knowledge_coverage = Gauge(
            "keep_ranker_knowledge_coverage",
            "Share of candidates scored with knowledge whose user / item / user_category row was found",
            ["model", "kind"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._model_labels: set[tuple[str, str, str]] = set()
        self._coverage: dict[str, list[int]] = {}
        self._coverage_lock = threading.Lock()
        self.reloads = Counter(
            "keep_ranker_model_reloads",
            "Model loads by result (loaded, failed, removed)",
            ["result"],
            registry=r,
        )

        self.process_restarts = Counter(
            "keep_ranker_process_restarts",
            "Serving processes (RANKER_GRPC_PROCESSES > 1) found dead and started again",
            registry=r,
        )
        self.events = Counter(
            "keep_ranker_events",
            "Click events by transport (api, grpc, stream) and result (recorded, duplicate)",
            ["transport", "result"],
            registry=r,
        )
        if multiprocess_dir is not None:  # every process' values, from their files
            self.registry = new_registry()
            self.registry.register(MultiProcessCollector(None, str(multiprocess_dir)))

    def observe_request(self, transport: str, method: str, code: str, seconds: float) -> None:
        self.latency.labels(transport, method, code).observe(seconds)
        self.requests.labels(transport, method, code).inc()

    def observe_coverage(self, model: str, candidates: int, found: tuple[int, int, int]) -> None:
        """One request's candidates and how many had user / item / user_category knowledge found."""
        with self._coverage_lock:
            totals = self._coverage.setdefault(model, [0, 0, 0, 0])
            totals[0] += candidates
            for i, n in enumerate(found):
                totals[i + 1] += n
            shares = [n / totals[0] if totals[0] else 0.0 for n in totals[1:]]
        self.knowledge_candidates.labels(model).inc(candidates)
        for kind, n, share in zip(COVERAGE_KINDS, found, shares, strict=True):
            self.knowledge_found.labels(model, kind).inc(n)
            self.knowledge_coverage.labels(model, kind).set(share)

    def on_breaker(self, state: BreakerState) -> None:
        self.breaker_state.set(int(state))

    def set_models(self, models: list[tuple[str, str, int]]) -> None:
        """``(name, revision, knowledge_version)`` of every loaded model."""
        now = {(name, revision, str(version)) for name, revision, version in models}
        for labels in self._model_labels - now:  # zeroed first: with several processes a removed
            self.model_info.labels(*labels).set(0)  # series would keep its last value in their files
            self.model_info.remove(*labels)
        for labels in now:
            self.model_info.labels(*labels).set(1)
        self._model_labels = now
        self.models_loaded.set(len(models))
