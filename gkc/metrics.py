"""GKC's Prometheus metrics, one registry per service instance (services.metrics).

With several gRPC worker processes (``GKC_WORKERS > 1``) every process writes its counters and
histograms to mmap files in one per-run directory (prometheus_client's multiprocess mode, see
:func:`enable_multiprocess`) and the main process' ``/metrics`` sums them, so requests served by any
worker are counted. Gauges (versions by state, active version) describe the shared Redis registry and
come from the main process alone; the cache hit ratio is derived at scrape time from the summed
counters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gkc.store import READY, STATES, MemoryInfo, VersionRecord
from services.errors import KeepError
from services.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, new_registry

if TYPE_CHECKING:
    from gkc.item_cache import ItemCache

#: ``() -> (records, active)``: the registry as the collector reports it (read at scrape time).
RecordSource = Callable[[], tuple[list[VersionRecord], int | None]]


class GkcMetrics:
    """``multiprocess_dir``: set in every process of a multi-worker GKC (after
    :func:`enable_multiprocess`); ``registry`` then exposes the sum over all processes."""

    def __init__(self, multiprocess_dir: str | os.PathLike[str] | None = None) -> None:
        own = self.registry = new_registry()
        self.latency = Histogram(
            "keep_gkc_request_seconds",
            "Request latency by method and status code",
            ["method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.candidates = Histogram(
            "keep_gkc_candidates_per_request",
            "Candidates per BatchGet",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.lookups = Counter(
            "keep_gkc_lookups",
            "Rows looked up per block (user, item, uc), version and result (hit = found, miss = absent)",
            ["block", "version", "result"],
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "keep_gkc_item_cache",
            "In-process item cache lookups by result",
            ["result"],
            registry=self.registry,
        )
        self._cache_hit, self._cache_miss = (self.cache_lookups.labels(r) for r in ("hit", "miss"))
        self._cache: Any = None
        self._cache_seen = (0, 0)
        if multiprocess_dir is None:
            own.register(_HitRatio(self.cache_lookups.collect))
        else:
            self.registry = new_registry()
            self.registry.register(_Summed(Path(multiprocess_dir)))
        self._children: dict[int, dict[tuple[str, str], Any]] = {}
        self.integrity_problems = Counter(
            "keep_gkc_integrity_problems",
            "Versions found lost, damaged or resurrected by the integrity checks",
            registry=own,
        )
        self.worker_restarts = Counter(
            "keep_gkc_worker_restarts",
            "gRPC worker processes (GKC_WORKERS > 1) found dead and started again",
            registry=own,
        )

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
        cache = self._cache
        if cache is not None and (cache.hits, cache.misses) != self._cache_seen:
            hits, misses = cache.hits, cache.misses
            self._cache_hit.inc(hits - self._cache_seen[0])
            self._cache_miss.inc(misses - self._cache_seen[1])
            self._cache_seen = (hits, misses)

    def watch_cache(self, cache: ItemCache) -> None:
        """Count this process' item cache hits and misses."""
        self._cache = cache

    def watch_registry(
        self, records: RecordSource, memory: Callable[[], MemoryInfo | None], healthy: Callable[[], bool]
    ) -> None:
        """Export versions by state, pins, Redis memory headroom and health (read at scrape time)."""
        self.registry.register(_RegistryCollector(records, memory, healthy))


def _hit_ratio(families: Iterable[Metric]) -> GaugeMetricFamily:
    counts = {"hit": 0.0, "miss": 0.0}
    for family in families:
        if family.name == "keep_gkc_item_cache":
            for sample in family.samples:
                if sample.name == "keep_gkc_item_cache_total":
                    counts[sample.labels["result"]] += sample.value
    total = counts["hit"] + counts["miss"]
    return GaugeMetricFamily(
        "keep_gkc_item_cache_hit_ratio",
        "Item cache hit ratio since start (all gRPC workers)",
        value=counts["hit"] / total if total else 0,
    )


class _HitRatio(Collector):
    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield _hit_ratio(self.source())


class _Summed(Collector):
    """Counters and histograms of every GKC process (mmap files), plus the hit ratio derived from them."""

    def __init__(self, path: Path) -> None:
        self.inner = MultiProcessCollector(None, str(path))

    def collect(self) -> Iterator[Metric]:
        families = list(self.inner.collect())
        yield from families
        yield _hit_ratio(families)


class _RegistryCollector(Collector):
    def __init__(
        self, records: RecordSource, memory: Callable[[], MemoryInfo | None], healthy: Callable[[], bool]
    ) -> None:
        self.records, self.memory, self.healthy = records, memory, healthy

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "keep_gkc_healthy",
            "1 while GKC can answer (gRPC SERVING, /healthz 200)",
            value=int(self.healthy()),
        )
        memory = self.memory()
        if memory is not None:
            yield GaugeMetricFamily(
                "keep_gkc_redis_used_bytes", "Redis used_memory (all primaries)", value=memory.used_bytes
            )
            yield GaugeMetricFamily(
                "keep_gkc_redis_limit_bytes",
                "Redis maxmemory, else the host's memory (all primaries)",
                value=memory.limit_bytes,
            )
            if memory.free_bytes is not None:
                yield GaugeMetricFamily(
                    "keep_gkc_redis_free_bytes",
                    "Headroom: bytes Redis can still take before it refuses writes",
                    value=memory.free_bytes,
                )
        try:
            records, active = self.records()
        except KeepError:
            return  # Redis is down: the registry gauges are absent rather than wrong
        g = GaugeMetricFamily("keep_gkc_versions", "Knowledge versions by state", labels=["state"])
        for state in STATES:
            g.add_metric([state], sum(1 for r in records if r.state == state))
        yield g
        yield GaugeMetricFamily(
            "keep_gkc_active_version", "The active knowledge version (0 = none)", value=active or 0
        )
        yield GaugeMetricFamily(
            "keep_gkc_pins",
            "Live consumer pins (leases) on versions",
            value=sum(len(r.pins) for r in records),
        )
        yield GaugeMetricFamily(
            "keep_gkc_pinned_versions",
            "Versions with at least one live pin",
            value=sum(1 for r in records if r.pins),
        )
        entries = GaugeMetricFamily(
            "keep_gkc_version_entries",
            "Entries of each ready version (K̂_u + K̂_i + K̂_uc)",
            labels=["version", "dtype"],
        )
        size = GaugeMetricFamily(
            "keep_gkc_version_bytes",
            "Redis memory each ready version took (used_memory growth while it was written)",
            labels=["version", "dtype"],
        )
        for r in records:
            if r.state == READY:
                entries.add_metric([str(r.version), r.dtype], r.entries)
                size.add_metric([str(r.version), r.dtype], r.size_bytes)
        yield entries
        yield size
