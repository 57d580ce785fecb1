"""A circuit breaker for the ranker's GKC calls: stop hammering a dead GKC, probe for its return.

States (the gauge values the dashboard maps): CLOSED 0 → calls go through; ``failure_threshold``
consecutive failures → OPEN 1: calls are refused (the ranker answers degraded at once) for
``reset_timeout_s``; then HALF_OPEN 2: up to ``half_open_probes`` calls go through as probes. A probe
that succeeds closes the breaker; one that fails opens it again for another ``reset_timeout_s``.

Only failures that say something about GKC's health count (unavailable, timeout): a NOT_FOUND version
or an invalid request is GKC answering, so the caller reports it as a success (GKC is reachable).
The clock is injected so tests drive time by hand.
Not thread-safe on purpose: the ranker calls it from its one event loop.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 2.0,
        *,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0 or half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be >= 1, reset_timeout_s > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_probes = half_open_probes
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose timeout has passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._set(BreakerState.HALF_OPEN)
            self._probes_in_flight = 0
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open, each ``True`` is a probe and must be reported."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_in_flight < self.half_open_probes:
            self._probes_in_flight += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probes_in_flight = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        if self._state is BreakerState.OPEN:
            return  # a call let through before the breaker opened; it changes nothing
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._probes_in_flight = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)


def log_breaker(state: BreakerState, gkc_addr: str) -> None:
    """One log line per breaker transition (issue 18: the ranker said nothing when GKC went down)."""
    if state == BreakerState.OPEN:
        log.warning(
            "GKC at %s keeps failing: circuit breaker OPEN, answers are degraded (base model only)", gkc_addr
        )
    elif state == BreakerState.HALF_OPEN:
        log.info("circuit breaker half-open: probing GKC at %s", gkc_addr)
    else:
        log.warning("GKC at %s answers again: circuit breaker closed, knowledge is back", gkc_addr)
