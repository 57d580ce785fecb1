"""Start a service as a subprocess on local ports and wait until it is healthy.

Tests, benchmarks, the demo and the load test all launch a service (``python -m gkc``, ``python -m
ranker``) the same way: build its environment on free loopback ports (with the function its own
settings module offers, over :func:`services.settings.prefixed_env`), start it with its output in a
log file, poll ``GET /healthz`` until it answers 200 and stop it with SIGTERM (then SIGKILL)
afterwards. This module is that one way, so a change to how services start (a longer start-up, a new
signal) is made once. It imports neither torch nor redis, and knows no service.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

#: How much of a service's log an error quotes (its end: where a start-up traceback is).
LOG_TAIL_CHARS = 8000


class ServiceStartError(RuntimeError):
    """A launched service exited, or did not answer ``/healthz`` with 200 in time."""


def log_tail(log_path: Path | None, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of ``log_path`` ('' when there is no log or it cannot be read)."""
    if log_path is None:
        return ""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _with_log(message: str, log_path: Path | None) -> str:
    tail = log_tail(log_path)
    return f"{message}:\n{tail}" if tail else message


def start(
    argv: Sequence[str], env: Mapping[str, str], *, log_path: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr written to ``log_path`` (discarded when it is None)."""
    if log_path is None:
        return subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with log_path.open("wb") as log:
        return subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=log)


def wait_healthy(
    proc: subprocess.Popen[bytes],
    name: str,
    health_url: str,
    *,
    log_path: Path | None = None,
    timeout_s: float = 30.0,
    verify: bool | ssl.SSLContext = True,
    poll_s: float = 0.2,
) -> None:
    """Poll ``health_url`` until it answers 200.

    Raises :class:`ServiceStartError` (with the end of ``log_path``) when the process exits first, or
    when it is still not healthy after ``timeout_s``; in that case the process is killed first.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=verify, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceStartError(_with_log(f"{name} exited with {proc.returncode}", log_path))
            try:
                if client.get(health_url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(poll_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise ServiceStartError(_with_log(f"{name} did not become healthy within {timeout_s:.0f} s", log_path))


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
    """Send ``sig`` (if still running), wait ``timeout_s``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
