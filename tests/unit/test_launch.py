"""services.launch: real subprocesses and a real local HTTP server (no mocks)."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gkc.settings import gkc_env
from ranker.settings import ranker_env
from services import launch

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(status: int) -> Iterator[str]:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def healthy_url() -> Iterator[str]:
    yield from _serve(200)


@pytest.fixture
def unhealthy_url() -> Iterator[str]:
    yield from _serve(503)


def _closed_port_url() -> str:
    from gkc.local_redis import free_port

    return f"http://127.0.0.1:{free_port()}/healthz"


def test_returns_once_the_server_answers_200(healthy_url: str, tmp_path: Path) -> None:
    proc = launch.start(SLEEPER, {}, log_path=tmp_path / "svc.log")
    try:
        launch.wait_healthy(proc, "svc", f"{healthy_url}/healthz", timeout_s=10, poll_s=0.05)
        assert proc.poll() is None
    finally:
        assert launch.stop(proc, timeout_s=10) == -signal.SIGTERM


def test_raises_with_the_log_tail_when_the_process_exits(tmp_path: Path) -> None:
    log_path = tmp_path / "svc.log"
    code = "import sys; print('x' * 20000); print('boom: bad settings'); sys.exit(3)"
    proc = launch.start([sys.executable, "-c", code], {}, log_path=log_path)
    with pytest.raises(launch.ServiceStartError) as err:
        launch.wait_healthy(proc, "svc", _closed_port_url(), log_path=log_path, timeout_s=30, poll_s=0.05)
    message = str(err.value)
    assert message.startswith("svc exited with 3:\n")
    assert "boom: bad settings" in message
    assert len(message) < launch.LOG_TAIL_CHARS + 100  # the tail, not the whole log


def test_kills_and_raises_when_it_stays_unhealthy(unhealthy_url: str, tmp_path: Path) -> None:
    log_path = tmp_path / "svc.log"
    proc = launch.start(SLEEPER, {}, log_path=log_path)
    with pytest.raises(launch.ServiceStartError, match=r"^svc did not become healthy within 1 s$"):
        launch.wait_healthy(proc, "svc", f"{unhealthy_url}/healthz", log_path=log_path, timeout_s=1)
    assert proc.returncode == -signal.SIGKILL


def test_stop_kills_what_ignores_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    assert launch.stop(proc, timeout_s=0.3) == -signal.SIGKILL
    proc.stdout.close()


def test_gkc_env_drops_an_inherited_redis_url_and_applies_overrides(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "GKC_REDIS_URL": "redis://elsewhere", "GKC_LOG_LEVEL": "DEBUG"}
    env = gkc_env(1, 2, "tok", data_dir=tmp_path, base=base, GKC_LOG_LEVEL="INFO")
    assert env == {
        "PATH": "/bin",
        "GKC_HOST": "127.0.0.1",
        "GKC_GRPC_PORT": "1",
        "GKC_HTTP_PORT": "2",
        "GKC_API_TOKEN": "tok",
        "GKC_DATA_DIR": str(tmp_path),
        "GKC_LOG_LEVEL": "INFO",
    }
    env = gkc_env(1, 2, "tok", redis_url="redis://x", host=None, base=base)
    assert env["GKC_REDIS_URL"] == "redis://x" and "GKC_HOST" not in env and "GKC_DATA_DIR" not in env


def test_ranker_env(tmp_path: Path) -> None:
    env = ranker_env(3, 4, "127.0.0.1:5", tmp_path, base={}, RANKER_LOG_LEVEL="WARNING")
    assert env == {
        "RANKER_HOST": "127.0.0.1",
        "RANKER_GRPC_PORT": "3",
        "RANKER_HTTP_PORT": "4",
        "RANKER_GKC_ADDR": "127.0.0.1:5",
        "RANKER_MODEL_DIR": str(tmp_path),
        "RANKER_LOG_LEVEL": "WARNING",
    }
