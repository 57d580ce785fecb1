"""The GKC circuit breaker's state machine, driven by an injected clock."""

from __future__ import annotations

import pytest

from ranker.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    threshold: int = 3, reset: float = 2.0, probes: int = 1
) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock, changes = Clock(), list[BreakerState]()
    breaker = CircuitBreaker(threshold, reset, half_open_probes=probes, clock=clock, on_change=changes.append)
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _, changes = make(threshold=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # the streak is broken: two more failures do not open it
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert changes == [BreakerState.OPEN]


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    breaker, clock, changes = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 1.999
    assert not breaker.allow()
    clock.now += 0.001
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else still waits
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    breaker, clock, _ = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2.5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.5  # 4.0 s after the first opening, but only 1.5 s after the failed probe
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


def test_late_failures_while_open_do_not_extend_the_timeout() -> None:
    breaker, clock, _ = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 1.0
    breaker.record_failure()  # a call that was in flight when it opened
    clock.now += 1.0
    assert breaker.state is BreakerState.HALF_OPEN


def test_several_probes_when_configured() -> None:
    breaker, clock, _ = make(threshold=1, reset=1.0, probes=2)
    breaker.record_failure()
    clock.now += 1.0
    assert [breaker.allow() for _ in range(3)] == [True, True, False]


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)
