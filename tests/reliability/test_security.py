"""Security proofs for GKC: constant-time token check, tokens never logged, TLS read path, size limits."""

from __future__ import annotations

import ast
import asyncio
import inspect
import random
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import gkc.rest
import services.http
from gkc.client import GkcClient, GkcOpsClient, tar_bundle
from gkc.local_redis import free_port
from gkc.settings import gkc_env
from protos import gkc_pb2_grpc
from ranker.gkc_source import GkcKnowledgeSource
from services import launch
from services.errors import KeepError, Unavailable
from tests.support.faultkit import random_request, response_tags, self_signed_cert, tagged_bundle
from tests.support.servers import ROOT, launch_gkc

pytestmark = pytest.mark.reliability
SECRET = "s3cr3t-Token-for-log-checks-7f2c9a"


def test_token_check_uses_constant_time_compare() -> None:
    """The bearer token is compared with hmac.compare_digest, and never with == / != / in; GKC's
    write routes use that one check (services.http.BearerToken)."""
    assert "BearerToken(" in inspect.getsource(gkc.rest)
    tree = ast.parse(inspect.getsource(services.http))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "compare_digest"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "hmac"
    ]
    assert calls, "services/http.py does not use hmac.compare_digest"
    compared = [ast.unparse(arg) for call in calls for arg in call.args]
    assert any("token" in c for c in compared), compared
    plain = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
        and any(name in ast.unparse(node) for name in ("token", "given", "authorization"))
    ]
    assert not plain, f"token compared with a plain operator: {plain}"


def test_wrong_tokens_are_refused_and_never_logged(start_gkc, tmp_path: Path) -> None:
    svc = start_gkc(None, GKC_API_TOKEN=SECRET, GKC_LOG_LEVEL="DEBUG")
    bundle = tagged_bundle(tmp_path / "b", 1.0)
    body = tar_bundle(bundle, tmp_path / "b.tar").read_bytes()
    same_length = SECRET[:-1] + ("x" if SECRET[-1] != "x" else "y")
    assert len(same_length) == len(SECRET)
    wrong: list[dict[str, str] | dict[bytes, bytes]] = [
        {"Authorization": f"Bearer {same_length}"},
        {"Authorization": f"Bearer {SECRET[:-1]}"},  # a prefix
        {"Authorization": f"Bearer {SECRET}x"},  # an extension
        {"Authorization": f"Token {SECRET}"},  # right secret, wrong scheme
        {"Authorization": SECRET},
        {b"Authorization": b"Bearer \xff\xfe-not-utf8"},
        {},
    ]
    for headers in wrong:
        for method, path, content in (
            ("POST", "/v1/versions", body),
            ("POST", "/v1/versions/1/activate", None),
            ("DELETE", "/v1/versions/1", None),
        ):
            r = httpx.request(method, svc.http_url + path, content=content, headers=headers, timeout=30)
            assert r.status_code == 401, (headers, path, r.status_code, r.text)
    ops = GkcOpsClient(svc.http_url, SECRET)
    version = ops.publish(bundle, progress=False)["version"]
    ops.activate(version)
    second = ops.publish(tagged_bundle(tmp_path / "c", 2.0), progress=False)["version"]
    ops.delete(second)
    assert ops.versions() != []
    ops.close()
    svc.stop()
    log = svc.log()
    assert "publishing v" in log  # the log did capture the publish at DEBUG level
    for secret in (SECRET, same_length, SECRET[:-1]):
        assert secret not in log
    redis_log = tmp_path / "svc0" / "data" / "redis.log"
    assert SECRET not in redis_log.read_text(errors="replace")


async def _ranker_source_read(addr: str, ca_file: Path, request: Any) -> int:
    source = GkcKnowledgeSource(addr, ca_file=ca_file)
    try:
        got = await source.batch_get(
            request.user_id, list(request.item_ids), list(request.category_ids), 0, timeout_s=10
        )
        return got.version
    finally:
        await source.close()


def test_read_path_behind_tls_with_a_self_signed_cert(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    grpc_port, http_port = free_port(), free_port()
    env = gkc_env(
        grpc_port, http_port, SECRET, data_dir=tmp_path / "data", GKC_TLS_CERT=str(cert), GKC_TLS_KEY=str(key)
    )
    log_path = tmp_path / "gkc.log"
    proc = launch.start([sys.executable, "-m", "gkc"], env, log_path=log_path, cwd=ROOT)
    tls = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{http_port}"
    try:
        launch.wait_healthy(proc, "GKC", f"{base}/healthz", log_path=log_path, verify=tls, poll_s=0.1)
        body = tar_bundle(tagged_bundle(tmp_path / "b", 8.0), tmp_path / "b.tar").read_bytes()
        r = httpx.post(
            f"{base}/v1/versions",
            content=body,
            headers={"Authorization": f"Bearer {SECRET}"},
            verify=tls,
            timeout=60,
        )
        assert r.status_code == 201, r.text
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)

        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        request = random_request(random.Random(0), 0)
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds) as channel:
            resp = gkc_pb2_grpc.GkcStub(channel).BatchGet(request, timeout=10)
        assert response_tags(resp) == ({8.0}, 0)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, pytest.raises(grpc.RpcError) as err:
            gkc_pb2_grpc.GkcStub(channel).BatchGet(request, timeout=3)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        other = ssl.create_default_context()  # a client that does not trust the cert refuses the server
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", verify=other, timeout=2)

        # the project's own clients, trusting the self-signed cert through ca_file
        ops = GkcOpsClient(base, SECRET, ca_file=cert)
        try:
            assert ops.versions()[0]["version"] == 1
            assert ops.activate(1)["version"] == 1
        finally:
            ops.close()
        with GkcClient(f"127.0.0.1:{grpc_port}", timeout_s=10, ca_file=cert) as client:
            got = client.batch_get(request.user_id, list(request.item_ids), list(request.category_ids))
        assert got.version == 1 and got.n_candidates == len(request.item_ids)
        # the ranker's knowledge source (RANKER_GKC_CA_FILE) reads the same over TLS
        assert asyncio.run(_ranker_source_read(f"127.0.0.1:{grpc_port}", cert, request)) == got.version
        untrusting = GkcOpsClient(base, SECRET)
        with pytest.raises(Unavailable):  # without the CA the client refuses the server
            untrusting.versions()
        untrusting.close()

        # an idle keep-alive TLS connection must not hold the shutdown open (the process used to hang
        # until killed, leaving its embedded Redis behind)
        idle = httpx.Client(verify=tls)
        assert idle.get(f"{base}/healthz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        idle.close()
        with GkcClient(f"127.0.0.1:{grpc_port}", timeout_s=3, tls=True) as client, pytest.raises(KeepError):
            client.batch_get(request.user_id, list(request.item_ids), list(request.category_ids))
    finally:
        launch.stop(proc)


def test_upload_size_limits_refuse_before_anything_is_written(tmp_path: Path) -> None:
    svc = launch_gkc(tmp_path / "gkc", None, GKC_MAX_UPLOAD_BYTES="40000")
    try:
        small = tagged_bundle(tmp_path / "small", 1.0, users=2, items=3)
        ops = GkcOpsClient(svc.http_url, svc.token)
        version = ops.publish(small, progress=False)["version"]
        before = ops.versions(True)
        big = tar_bundle(tagged_bundle(tmp_path / "big", 2.0, items=2000), tmp_path / "big.tar").read_bytes()
        assert len(big) > 40000
        auth = {"Authorization": f"Bearer {svc.token}"}
        declared = httpx.post(f"{svc.http_url}/v1/versions", content=big, headers=auth, timeout=30)
        chunks = iter([big[i : i + 4096] for i in range(0, len(big), 4096)])
        streamed = httpx.post(f"{svc.http_url}/v1/versions", content=chunks, headers=auth, timeout=30)
        assert (declared.status_code, streamed.status_code) == (413, 413), (declared.text, streamed.text)
        assert declared.json()["error"] and streamed.json()["error"]
        assert ops.versions(True) == before
        assert [v["version"] for v in ops.versions()] == [version]
        ops.close()
    finally:
        svc.stop()
