"""Whether this GKC process can answer, decided by checking, not assumed.

:class:`HealthMonitor` runs in every serving process (a thread, every ``interval_s``): it pings every
Redis primary, reads the store's memory figures (fitness, headroom) and re-reads the registry view. Its
verdict drives gRPC health (NOT_SERVING while a check fails) and ``/healthz`` (503), and both come back
by themselves once the checks pass again.

Fitness (:func:`fitness_problem`): a Redis that may evict GKC's keys under memory pressure would make
ready versions lose rows silently. An eviction policy other than ``noeviction`` or ``volatile-*`` (those
only evict keys with a TTL, and GKC sets none) is refused with a one-line reason — GKC then answers
UNAVAILABLE — unless ``GKC_ACCEPT_EVICTION=true``; then the janitor verifies every ready version's key
count whenever Redis reports evictions, and marks failing ones ``damaged``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gkc.serving_view import ServingView
from gkc.store import MemoryInfo, StoreProbe
from services.errors import KeepError

log = logging.getLogger(__name__)


def fitness_problem(memory: MemoryInfo, accept_eviction: bool) -> str | None:
    policy = memory.policy
    if policy == "noeviction" or policy.startswith("volatile-") or accept_eviction:
        return None
    return (
        f"Redis may evict GKC's keys (maxmemory-policy {policy}): set maxmemory-policy noeviction, or "
        "GKC_ACCEPT_EVICTION=true to serve anyway (versions that lose keys are then marked damaged)"
    )


@dataclass
class HealthState:
    problem: str | None = "not checked yet"
    memory: MemoryInfo | None = None
    listeners: list[Callable[[str | None], None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


class HealthMonitor:
    def __init__(
        self,
        store: StoreProbe,
        view: ServingView,
        *,
        accept_eviction: bool = False,
        interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.view = view
        self.accept_eviction = accept_eviction
        self.interval_s = interval_s
        self.state = HealthState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gkc-health", daemon=True)

    def check(self) -> str | None:
        """One round of checks; returns the problem (None = healthy) and tells the listeners."""
        with self._lock:
            return self._check()

    def _check(self) -> str | None:
        try:
            self.store.ping()
            self.state.memory = self.store.memory()
            self.view.refusal = fitness_problem(self.state.memory, self.accept_eviction)
            self.view.refresh()
            problem = self.view.refusal
        except KeepError as err:
            problem = err.message
        if problem != self.state.problem:
            if problem is None:
                log.info("GKC can answer again")
            else:
                log.warning("GKC cannot answer: %s", problem)
            self.state.problem = problem
            for listener in self.state.listeners:
                listener(problem)
        return problem

    def start(self) -> HealthMonitor:
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("health check failed")
