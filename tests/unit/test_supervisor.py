"""services.supervisor.ProcessGroup: a killed or crashed process is started again (with a growing delay
while it keeps dying young), one that exited 0 is left stopped, and stop() stops them all."""

from __future__ import annotations

import os
import signal
import sys
import time

from services.supervisor import ProcessGroup


def _sleep_forever() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.1)


def _exit_with(code: int) -> None:
    sys.exit(code)


def _wait_dead(group: ProcessGroup, index: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    slot = next(s for s in group._slots if s.index == index)
    while slot.proc.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_killed_process_is_started_again_and_counted() -> None:
    seen: list[tuple[int, int | None, int | None]] = []
    group = ProcessGroup(
        "t", 3, _sleep_forever, lambda i: (), on_restart=lambda *a: seen.append(a), stable_s=0.0
    ).start(supervise=False)
    try:
        before = group.pids()
        assert sorted(before) == [1, 2]
        os.kill(before[2], signal.SIGKILL)
        _wait_dead(group, 2)
        assert group.check() == [2]
        after = group.pids()
        assert after[1] == before[1] and after[2] != before[2]
        assert seen == [(2, before[2], -signal.SIGKILL)]
        assert group.restarts() == 1
        assert group.check() == []  # both alive: nothing to do
    finally:
        group.stop(timeout_s=5)
    assert not any(s.proc.is_alive() for s in group._slots)


def test_a_process_that_keeps_dying_young_waits_longer_each_time() -> None:
    group = ProcessGroup(
        "t", 2, _exit_with, lambda i: (3,), stable_s=60.0, min_backoff_s=0.2, max_backoff_s=0.5
    ).start(supervise=False)
    try:
        delays = []
        for _ in range(3):
            _wait_dead(group, 1)
            group.check()  # first seen dead: scheduled, not yet restarted (delay > 0)
            slot = group._slots[0]
            delays.append(slot.delay_s)
            assert slot.due > time.monotonic() - 0.05
            time.sleep(slot.delay_s + 0.05)
            assert group.check() == [1]
        assert delays == [0.2, 0.4, 0.5]
    finally:
        group.stop(timeout_s=5)


def test_a_process_that_exited_cleanly_is_left_stopped() -> None:
    group = ProcessGroup("t", 2, _exit_with, lambda i: (0,), stable_s=0.0).start(supervise=False)
    try:
        _wait_dead(group, 1)
        assert group.check() == []
        assert group.restarts() == 0
    finally:
        group.stop(timeout_s=5)


def test_the_supervisor_thread_restarts_on_its_own() -> None:
    group = ProcessGroup("t", 2, _sleep_forever, lambda i: (), stable_s=0.0, interval_s=0.05).start()
    try:
        pid = group.pids()[1]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while group.pids()[1] == pid:
            assert time.monotonic() < deadline, "not restarted"
            time.sleep(0.05)
        assert group.restarts() == 1
    finally:
        group.stop(timeout_s=5)
