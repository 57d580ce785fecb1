"""Start a KEEP service (GKC or ranker) as a subprocess on local ports and wait until it is healthy.

Tests, benchmarks and the load test all launch ``python -m gkc`` / ``python -m ranker`` the same way:
build the service's environment on free loopback ports, start it with its output in a log file, poll
``GET /healthz`` until it answers 200 and stop it with SIGTERM (then SIGKILL) afterwards. This module is
that one way, so a change to how services start (a new required variable, a longer start-up) is made
once. It imports neither torch nor redis.
"""

from __future__ import annotations

import os
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


def _env(prefix: str, base: Mapping[str, str] | None, values: Mapping[str, object]) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``{prefix}_{name}`` for every value not None."""
    env = dict(os.environ if base is None else base)
    env.update({f"{prefix}_{name}": str(value) for name, value in values.items() if value is not None})
    return env


def gkc_env(
    grpc_port: int,
    http_port: int,
    token: str,
    *,
    data_dir: Path | None = None,
    redis_url: str | None = None,
    host: str | None = "127.0.0.1",
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a GKC on ``host`` (None: its default) and the given ports.

    ``base`` (default: this process's environment) is copied; an inherited ``GKC_REDIS_URL`` is
    dropped, so the GKC uses ``redis_url`` or else its embedded Redis under ``data_dir``. ``extra``
    (``GKC_*=value``) is added last, before the Redis URL.
    """
    values = {"HOST": host, "GRPC_PORT": grpc_port, "HTTP_PORT": http_port, "API_TOKEN": token}
    env = {**_env("GKC", base, {**values, "DATA_DIR": data_dir}), **extra}
    env.pop("GKC_REDIS_URL", None)
    if redis_url:
        env["GKC_REDIS_URL"] = redis_url
    return env


def ranker_env(
    grpc_port: int,
    http_port: int,
    gkc_addr: str,
    model_dir: Path,
    *,
    host: str | None = "127.0.0.1",
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a ranker on ``host`` (None: its default) and the given ports, reading
    knowledge from the GKC at ``gkc_addr`` and models from ``model_dir``; ``extra`` is added last."""
    values = {"HOST": host, "GRPC_PORT": grpc_port, "HTTP_PORT": http_port, "GKC_ADDR": gkc_addr}
    return {**_env("RANKER", base, {**values, "MODEL_DIR": model_dir}), **extra}
