"""Real GKC and ranker processes on free ports, and a random bundle to publish to them.

- :func:`launch_gkc` ``(workdir, redis_url=None, **env) -> GkcService``: ``python -m gkc`` (gRPC + REST)
  on free ports, healthy; :class:`GkcService` has ``grpc_addr``, ``http_url``, ``token``, ``redis_url``.
  It starts empty; publish with ``GkcOpsClient(svc.http_url, svc.token).publish(bundle_dir)``.
- :func:`launch_ranker` ``(workdir, model_dir, gkc_addr, **env) -> RankerProc``: ``python -m ranker`` on
  free ports, with short GKC timeouts and breaker settings for tests (override in ``env``).
- :func:`make_bundle` ``(path, seed=0, users=.., items=.., categories=..) -> Path``: a random saved bundle.

The pytest fixtures built on these live in :mod:`tests.support.fixtures`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gkc import bundle as gkc_bundle
from gkc.local_redis import free_port
from gkc.settings import gkc_env
from ranker.settings import ranker_env
from services import launch

TEST_TOKEN = "integration-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GkcService:
    grpc_addr: str
    http_url: str
    token: str
    redis_url: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        return launch.stop(self.proc, sig=sig, timeout_s=timeout_s)


def launch_gkc(workdir: Path, redis_url: str | None = None, **env: str) -> GkcService:
    """Start ``python -m gkc`` and wait until /healthz answers 200 (and its gRPC port is ready)."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    while http_port == grpc_port:
        http_port = free_port()
    full = gkc_env(
        grpc_port,
        http_port,
        TEST_TOKEN,
        data_dir=workdir / "data",
        redis_url=redis_url,
        GKC_LOG_LEVEL="INFO",
    )
    full.update(env)
    log_path = workdir / f"gkc-{http_port}.log"
    proc = launch.start([sys.executable, "-m", "gkc"], full, log_path=log_path, cwd=ROOT)
    svc = GkcService(
        grpc_addr=f"127.0.0.1:{grpc_port}",
        http_url=f"http://127.0.0.1:{http_port}",
        token=full["GKC_API_TOKEN"],
        redis_url=redis_url,
        proc=proc,
        log_path=log_path,
        env=full,
    )
    deadline = time.monotonic() + 30
    launch.wait_healthy(proc, "GKC", f"{svc.http_url}/healthz", log_path=log_path, timeout_s=30, poll_s=0.1)
    _wait_grpc(svc.grpc_addr, deadline)
    return svc


def _wait_grpc(addr: str, deadline: float) -> None:
    import grpc

    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))


@dataclass
class RankerProc:
    grpc_addr: str
    http_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        launch.stop(self.proc)


def launch_ranker(workdir: Path, model_dir: Path, gkc_addr: str, **env: str) -> RankerProc:
    """Start ``python -m ranker`` serving ``model_dir`` and wait until /healthz answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    full = ranker_env(grpc_port, http_port, gkc_addr, model_dir)
    full.update(
        {
            # generous: this machine is shared, and a timed-out GKC call would make a parity run degraded
            "RANKER_GKC_TIMEOUT_S": "2.0",
            "RANKER_REQUEST_DEADLINE_S": "4.0",
            "RANKER_RELOAD_POLL_S": "0.2",
            "RANKER_BREAKER_FAILURES": "3",
            "RANKER_BREAKER_RESET_S": "0.3",
            "RANKER_DATA_DIR": str(workdir / "data"),  # its embedded sequence store, private to the test
            "RANKER_FEATURES_TIMEOUT_S": "2.0",
            "RANKER_EVENTS_TOKEN": TEST_TOKEN,
            **env,
        }
    )
    log_path = workdir / f"ranker-{http_port}.log"
    proc = launch.start([sys.executable, "-m", "ranker"], full, log_path=log_path, cwd=ROOT)
    ranker = RankerProc(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", proc, log_path, full)
    launch.wait_healthy(proc, "ranker", f"{ranker.http_url}/healthz", log_path=log_path, timeout_s=90)
    return ranker


def make_bundle(
    path: Path,
    seed: int = 0,
    users: int = 40,
    items: int = 120,
    categories: int = 6,
    dim: int = 8,
    uc_dim: int = 4,
) -> Path:
    """A random bundle: every user has K̂_uc for half of the categories; ids are strings like 'u3'."""
    rng = np.random.default_rng(seed)
    uc_u, uc_c = [], []
    for u in range(users):
        for c in rng.choice(categories, max(1, categories // 2), replace=False):
            uc_u.append(f"u{u}")
            uc_c.append(f"c{c}")
    built = gkc_bundle.build(
        user_ids=[f"u{u}" for u in range(users)],
        user_vectors=rng.normal(size=(users, dim)),
        item_ids=[f"i{i}" for i in range(items)],
        item_vectors=rng.normal(size=(items, dim)),
        uc_user_ids=uc_u,
        uc_category_ids=uc_c,
        uc_vectors=rng.normal(size=(len(uc_u), uc_dim)),
        source={"test": seed},
    )
    return gkc_bundle.save(built, path)
