"""Helpers for the reliability proofs (faults, bad input, security); the fixtures are in
:mod:`tests.support.fixtures`, the launched services in :mod:`tests.support.servers`.

- :func:`tagged_bundle`: a bundle whose every value is one number (the *tag*), so a response's blocks
  tell which version they came from (torn-read checks).
- :class:`ReadLoad`: threads that hammer ``BatchGet`` and record every status code and answer.
- :class:`LatencyProxy`: a tiny TCP proxy that delays every chunk (slow Redis / slow GKC), the one
  fault real parts cannot give.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
import httpx
import numpy as np

from gkc import bundle as gkc_bundle
from protos import gkc_pb2, gkc_pb2_grpc

USERS, ITEMS, CATEGORIES = 30, 200, 5


def tagged_bundle(path: Path, tag: float, *, users: int = USERS, items: int = ITEMS, dim: int = 4) -> Path:
    """Every K̂_u, K̂_i and K̂_uc value is ``tag``; every user has all categories; ids like ``u3``."""
    uc_u = [f"u{u}" for u in range(users) for _ in range(CATEGORIES)]
    uc_c = [f"c{c}" for _ in range(users) for c in range(CATEGORIES)]
    built = gkc_bundle.build(
        user_ids=[f"u{u}" for u in range(users)],
        user_vectors=np.full((users, dim), tag),
        item_ids=[f"i{i}" for i in range(items)],
        item_vectors=np.full((items, dim), tag),
        uc_user_ids=uc_u,
        uc_category_ids=uc_c,
        uc_vectors=np.full((len(uc_u), dim), tag),
        source={"tag": tag},
    )
    return gkc_bundle.save(built, path)


def response_tags(resp: gkc_pb2.BatchGetResponse) -> tuple[set[float], int]:
    """The distinct values in every found row of every block, and the count of rows answered missing."""
    tags: set[float] = set()
    missing = 0
    if resp.user_found:
        tags.update(np.frombuffer(resp.user, dtype="<f4").tolist())
    else:
        missing += 1
    for block in (resp.items, resp.user_categories):
        rows = np.frombuffer(block.data, dtype="<f4").reshape(block.rows, block.dim)
        found = np.frombuffer(block.found, dtype=np.uint8).astype(bool)
        tags.update(np.unique(rows[found]).tolist())
        missing += int((~found).sum())
    return tags, missing


def random_request(rng: random.Random, version: int, n: int = 20) -> gkc_pb2.BatchGetRequest:
    """A request for known ids only (every row must be found in a ready version)."""
    return gkc_pb2.BatchGetRequest(
        user_id=f"u{rng.randrange(USERS)}",
        item_ids=[f"i{rng.randrange(ITEMS)}" for _ in range(n)],
        category_ids=[f"c{rng.randrange(CATEGORIES)}" for _ in range(n)],
        version=version,
    )


class BackgroundCallers:
    """``with load:`` runs ``self._run(n)`` in ``self.threads`` daemon threads until the block ends.

    For dataclasses that declare ``threads``, ``_stop`` (an Event), ``_workers`` (a list) and ``_run``."""

    threads: int
    _stop: threading.Event
    _workers: list[threading.Thread]
    #: How long ``__exit__`` waits for each thread (its calls' timeout plus a margin).
    join_s: ClassVar[float] = 10.0

    def _run(self, n: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.join_s)


@dataclass
class ReadLoad(BackgroundCallers):
    """``threads`` readers sending :func:`random_request` for a version chosen by ``pick_version``.

    Records every status code, the latency of every failed call, and hands each OK response to
    ``check`` (which raises on a bad answer; the first such error is kept in ``errors``).
    """

    addr: str
    pick_version: Callable[[random.Random], int]
    check: Callable[[gkc_pb2.BatchGetRequest, gkc_pb2.BatchGetResponse], None] | None = None
    threads: int = 3
    timeout_s: float = 3.0
    #: ``(rng, version) -> request``; default :func:`random_request`.
    make_request: Callable[[random.Random, int], gkc_pb2.BatchGetRequest] | None = None
    codes: Counter[str] = field(default_factory=Counter)
    #: (monotonic time, code) of every answer, for rates over a window.
    answers: list[tuple[float, str]] = field(default_factory=list)
    failed_latency_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        with self._lock:
            return sum(self.codes.values())

    def rate(self, code: str, start: float, end: float) -> float:
        """Answers with ``code`` per second between two ``time.monotonic()`` points."""
        with self._lock:
            n = sum(1 for t, c in self.answers if c == code and start <= t < end)
        return n / max(end - start, 1e-9)

    def wait_for(self, code: str, count: int = 1, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.codes[code] >= count:
                    return True
            time.sleep(0.02)
        return False

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        # its own TCP connection per thread (channels to one target share one by default), so that
        # the load reaches every worker process behind SO_REUSEPORT
        with grpc.insecure_channel(self.addr, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = gkc_pb2_grpc.GkcStub(channel).BatchGet
            while not self._stop.is_set():
                make = self.make_request or random_request
                request = make(rng, self.pick_version(rng))
                start = time.perf_counter()
                try:
                    resp = call(request, timeout=self.timeout_s)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                    resp = None
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.codes[code] += 1
                    self.answers.append((time.monotonic(), code))
                    if resp is None:
                        self.failed_latency_s.append(elapsed)
                if resp is not None and self.check is not None:
                    try:
                        self.check(request, resp)
                    except AssertionError as err:
                        with self._lock:
                            self.errors.append(str(err))
                if resp is None:
                    time.sleep(0.01)  # a down dependency: do not spin


class LatencyProxy:
    """TCP proxy on a free loopback port that forwards to ``target`` (``(host, port)`` or a unix socket
    path) and sleeps ``delay_s`` per chunk.

    ``delay_s`` can be changed while running (e.g. slow, then fast again).
    """

    def __init__(self, target: tuple[str, int] | str, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, str):  # a unix socket path (the embedded Redis)
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(self.target)
            return upstream
        return socket.create_connection(self.target, timeout=5)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for s in self._conns:
            s.close()


class BackgroundUpload:
    """``POST /v1/versions`` of a tar ``body`` in a thread (a publish to interfere with)."""

    def __init__(self, svc: Any, body: bytes, timeout_s: float = 300.0) -> None:
        self.outcome: list[httpx.Response | Exception] = []
        headers = {"Authorization": f"Bearer {svc.token}"}

        def upload() -> None:
            try:
                self.outcome.append(
                    httpx.post(
                        f"{svc.http_url}/v1/versions", content=body, headers=headers, timeout=timeout_s
                    )
                )
            except httpx.TransportError as err:
                self.outcome.append(err)

        self._thread = threading.Thread(target=upload, daemon=True)
        self._thread.start()

    def result(self, timeout_s: float = 300.0) -> httpx.Response | Exception:
        self._thread.join(timeout_s)
        assert self.outcome, "the upload did not finish"
        return self.outcome[0]


class UploadEnded(AssertionError):
    """The upload was answered before its version was seen staging (``outcome``: what it got)."""

    def __init__(self, outcome: httpx.Response | Exception) -> None:
        text = (
            f"{outcome.status_code} {outcome.text[:300]}"
            if isinstance(outcome, httpx.Response)
            else repr(outcome)
        )
        super().__init__(f"the upload ended before its version was seen staging: {text}")
        self.outcome = outcome


def wait_staging(ops: Any, timeout_s: float = 60.0, upload: BackgroundUpload | None = None) -> int:
    """The number of the version being published, once the registry lists it as staging. With
    ``upload``: :class:`UploadEnded` as soon as that upload has its answer without a staging version seen
    (it was refused before it began, or ended between two looks), instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        staging = next((v["version"] for v in ops.versions(True) if v["state"] == "staging"), None)
        if staging is not None:
            return int(staging)
        if upload is not None and upload.outcome:
            raise UploadEnded(upload.outcome[0])
        time.sleep(0.01)
    raise AssertionError("the publish never reached the staging state")


def publish_tagged(svc: Any, tmp: Path, tags: Sequence[float]) -> dict[float, int]:
    """Publish one tagged bundle per tag; returns tag -> version."""
    from gkc.client import GkcOpsClient

    ops = GkcOpsClient(svc.http_url, svc.token)
    out = {}
    for tag in tags:
        out[tag] = int(ops.publish(tagged_bundle(tmp / f"tag-{tag}", tag), progress=False)["version"])
    ops.close()
    return out


def self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key, as PEM files under ``tmp``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
