"""Extra serving processes of a service, kept at their number: one that dies is started again.

GKC (``GKC_WORKERS``) and the ranker (``RANKER_GRPC_PROCESSES``) serve gRPC from several spawned
processes on one port (``SO_REUSEPORT``). Without a supervisor a process killed by the OOM killer or a
native crash left the service serving with fewer processes until someone restarted all of it, and the
only sign was lower throughput. Here a thread of the main process checks every ``interval_s``; a process
that died (killed by a signal, or a non-zero exit) is logged with its exit code, counted
(``on_restart``) and spawned again with the same index. One that exited 0 was asked to stop (its
SIGTERM / SIGINT handler drains and returns; a Ctrl-C reaches every process of the group) and is left
stopped, so the supervisor never fights a shutdown. A process that dies within ``stable_s`` of its
start is restarted after a delay that doubles each time (up to ``max_backoff_s``), so a process that
cannot start (a broken model, a port taken) does not spin a core; one that ran longer is restarted at
once.

A thread rather than an asyncio task: the main process' loop may be busy serving, and process
handling here is blocking (``spawn`` start, ``join``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    index: int
    proc: BaseProcess
    started: float
    delay_s: float = 0.0  # before the next restart of this slot
    due: float = 0.0  # monotonic time of that restart, once the process is seen dead
    restarts: int = 0
    stopped: bool = False  # exited 0: asked to stop, not restarted


@dataclass
class ProcessGroup:
    """Processes ``1 .. count - 1`` of a service (index 0 is the main process, not spawned here).

    ``args_of(index)`` gives the target's arguments for each (re)start; ``on_restart(index, pid,
    exitcode)`` of the dead process is called in the supervisor thread before its restart (metrics).
    """

    name: str
    count: int
    target: Callable[..., None]
    args_of: Callable[[int], tuple[Any, ...]]
    on_restart: Callable[[int, int | None, int | None], None] | None = None
    interval_s: float = 0.5
    stable_s: float = 10.0
    min_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self, supervise: bool = True) -> ProcessGroup:
        with self._lock:
            self._slots = [_Slot(i, self._spawn(i), time.monotonic()) for i in range(1, self.count)]
        if supervise and self._slots:
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-supervisor", daemon=True)
            self._thread.start()
        return self

    def pids(self) -> dict[int, int]:
        """Index → pid of each process now (a just-restarted one has its new pid)."""
        with self._lock:
            return {s.index: s.proc.pid for s in self._slots if s.proc.pid is not None}

    def restarts(self) -> int:
        with self._lock:
            return sum(s.restarts for s in self._slots)

    def check(self) -> list[int]:
        """Restart the dead processes whose delay has passed; the indices restarted."""
        restarted = []
        with self._lock:
            for slot in self._slots:
                if self._stopping.is_set():
                    break
                if slot.stopped or slot.proc.is_alive():
                    continue
                if slot.proc.exitcode == 0:
                    slot.stopped = True
                    log.warning(
                        "%s process %d (pid %s) stopped (exit code 0); not restarted",
                        self.name,
                        slot.index,
                        slot.proc.pid,
                    )
                    continue
                now = time.monotonic()
                if slot.due == 0.0:  # first seen dead: schedule
                    lived = now - slot.started
                    if lived < self.stable_s:
                        slot.delay_s = min(max(slot.delay_s * 2, self.min_backoff_s), self.max_backoff_s)
                    else:
                        slot.delay_s = 0.0
                    slot.due = now + slot.delay_s
                    log.error(
                        "%s process %d (pid %s) died with exit code %s after %.1f s; restarting it in %.1f s",
                        self.name,
                        slot.index,
                        slot.proc.pid,
                        slot.proc.exitcode,
                        lived,
                        slot.delay_s,
                    )
                if now < slot.due:
                    continue
                if self.on_restart is not None:
                    self.on_restart(slot.index, slot.proc.pid, slot.proc.exitcode)
                slot.proc.join(0)  # reap
                slot.proc = self._spawn(slot.index)
                slot.started, slot.due = time.monotonic(), 0.0
                slot.restarts += 1
                restarted.append(slot.index)
        return restarted

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process (each drains its calls), wait, then SIGKILL what is left."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            procs = [s.proc for s in self._slots]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("%s: pid %s did not stop within %.0f s; killed", self.name, proc.pid, timeout_s)
                proc.kill()
                proc.join(5)

    def _spawn(self, index: int) -> BaseProcess:
        ctx = mp.get_context("spawn")
        proc = ctx.Process(
            target=self.target, args=self.args_of(index), daemon=True, name=f"{self.name}-{index}"
        )
        proc.start()
        return proc

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the supervisor die silently
                log.exception("%s: supervising the processes failed", self.name)
