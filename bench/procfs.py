"""Process facts from Linux ``/proc`` for the benches and the multi-process tests (empty elsewhere)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (empty when gone or not Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def status(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``, ``RssFile``, ...) in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def own_peak_rss(pid: int | str = "self") -> int:
    """Peak RSS in bytes of the process's own memory since it started its program (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``execve``, and a child started with fork or
    vfork (``subprocess``) begins at its parent's RSS or peak, so a step run in a child of a big parent
    reported the parent's peak (``keep bench delta``'s children all read 2,525 MiB: the parent's
    pre-training)."""
    return status(pid)["VmHWM"]


def cpu_ticks(pid: int) -> int:
    """User + system CPU time so far, in clock ticks (0 when gone)."""
    fields = stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    fields = stat(pid)
    return bool(fields) and fields[0] != "Z"


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


def children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (a process started from a thread, e.g. a
    supervisor's restart, is that thread's child, not the main thread's)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        one = todo.pop()
        out.append(one)
        todo += children(one)
    return out


def rollup(pid: int) -> tuple[int, int]:
    """``(Rss, Pss)`` of ``pid`` in bytes from ``/proc/<pid>/smaps_rollup`` (zeros when gone). PSS
    shares each shared page among the processes that map it (Ray's object store, fork copies)."""
    rss = pss = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss
