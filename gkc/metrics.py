"""GKC's Prometheus metrics, one registry per service instance (services.metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gkc.store import STATES
from services.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, new_registry

if TYPE_CHECKING:
    from gkc.core import KnowledgeCenter


class GkcMetrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        self.latency = Histogram(
            "gkc_request_seconds",
            "Request latency by method and status code",
            ["method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.candidates = Histogram(
            "gkc_candidates_per_request",
            "Candidates per BatchGet",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.lookups = Counter(
            "gkc_lookups",
            "Rows looked up per block (user, item, uc), version and result (hit = found, miss = absent)",
            ["block", "version", "result"],
            registry=self.registry,
        )
        self._children: dict[int, dict[tuple[str, str], Any]] = {}

    def observe(
        self, version: int, user_found: bool, items_found: int, n_items: int, ucs_found: int, n_ucs: int
    ) -> None:
        """Called once per BatchGet; label children are cached per version (labels() is not free)."""
        c = self._children.get(version)
        if c is None:
            v = str(version)
            c = self._children[version] = {
                (block, result): self.lookups.labels(block, v, result)
                for block in ("user", "item", "uc")
                for result in ("hit", "miss")
            }
        c["user", "hit" if user_found else "miss"].inc()
        c["item", "hit"].inc(items_found)
        c["item", "miss"].inc(n_items - items_found)
        c["uc", "hit"].inc(ucs_found)
        c["uc", "miss"].inc(n_ucs - ucs_found)

    def watch(self, center: KnowledgeCenter) -> None:
        """Export the item cache counters and versions by state (read at scrape time)."""
        self.registry.register(_CenterCollector(center))


class _CenterCollector(Collector):
    def __init__(self, center: KnowledgeCenter) -> None:
        self.center = center

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self.center.cache
        c = CounterMetricFamily(
            "gkc_item_cache", "In-process item cache lookups by result", labels=["result"]
        )
        c.add_metric(["hit"], cache.hits)
        c.add_metric(["miss"], cache.misses)
        yield c
        total = cache.hits + cache.misses
        yield GaugeMetricFamily(
            "gkc_item_cache_hit_ratio",
            "Item cache hit ratio since start",
            value=cache.hits / total if total else 0,
        )
        g = GaugeMetricFamily("gkc_versions", "Knowledge versions by state", labels=["state"])
        records = self.center.records
        for state in STATES:
            g.add_metric([state], sum(1 for r in records if r.state == state))
        yield g
        yield GaugeMetricFamily(
            "gkc_active_version", "The active knowledge version (0 = none)", value=self.center.active or 0
        )
