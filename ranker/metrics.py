"""The ranker's Prometheus metrics, one registry per service instance (services.metrics).

Names are what ``deploy/grafana/dashboards/keep.json`` queries: ``keep_ranker_request_seconds``,
``keep_ranker_requests_total{code}``, ``keep_ranker_degraded_total``, ``keep_ranker_gkc_breaker_state``
(0 closed, 1 open, 2 half-open).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ranker.breaker import BreakerState
from services.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, new_registry


class RankerMetrics:
    def __init__(self) -> None:
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
            "Time per request in each stage: gkc (BatchGet) and model (encode + K̂ + forward)",
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
            "keep_ranker_gkc_breaker_state", "GKC circuit breaker: 0 closed, 1 open, 2 half-open", registry=r
        )
        self.models_loaded = Gauge("keep_ranker_models_loaded", "Models currently loaded", registry=r)
        self.model_info = Gauge(
            "keep_ranker_model_info",
            "1 per loaded model, labelled with its artifact revision and pinned knowledge version",
            ["model", "revision", "knowledge_version"],
            registry=r,
        )
        self.reloads = Counter(
            "keep_ranker_model_reloads",
            "Model loads by result (loaded, failed, removed)",
            ["result"],
            registry=r,
        )

    def observe_request(self, transport: str, method: str, code: str, seconds: float) -> None:
        self.latency.labels(transport, method, code).observe(seconds)
        self.requests.labels(transport, method, code).inc()

    def on_breaker(self, state: BreakerState) -> None:
        self.breaker_state.set(int(state))

    def set_models(self, models: list[tuple[str, str, int]]) -> None:
        """``(name, revision, knowledge_version)`` of every loaded model."""
        self.model_info.clear()
        for name, revision, version in models:
            self.model_info.labels(name, revision, str(version)).set(1)
        self.models_loaded.set(len(models))
