"""The ranker serves TLS like GKC (issue 17: its gRPC had no TLS while GKC's had): with
``RANKER_TLS_CERT``/``RANKER_TLS_KEY`` both its gRPC ``Rank`` and its REST API answer only over TLS."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from bench import ranker_world
from gkc.local_redis import free_port
from protos import ranker_pb2, ranker_pb2_grpc
from ranker.settings import ranker_env
from services import launch
from tests.support.faultkit import self_signed_cert
from tests.support.servers import ROOT

pytestmark = pytest.mark.reliability


def test_rank_and_rest_over_tls_only(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    log = ranker_world.make_log(users=20, items=60, categories=4, seed=0)
    ranker_world.make_artifact(tmp_path / "models" / "click", log, None, 0)
    grpc_port, http_port = free_port(), free_port()
    env = ranker_env(
        grpc_port,
        http_port,
        "127.0.0.1:1",  # no GKC: the model has no plug-in
        tmp_path / "models",
        RANKER_TLS_CERT=str(cert),
        RANKER_TLS_KEY=str(key),
    )
    log_path = tmp_path / "ranker.log"
    proc = launch.start([sys.executable, "-m", "ranker"], env, log_path=log_path, cwd=ROOT)
    try:
        tls = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{http_port}"
        launch.wait_healthy(proc, "ranker", f"{base}/healthz", log_path=log_path, verify=tls, timeout_s=120)
        with pytest.raises(httpx.HTTPError):  # plaintext HTTP is not served
            httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
        request = ranker_pb2.RankRequest(
            user_id=str(log["user_id"][0]),
            item_ids=[str(i) for i in log["item_id"][:3]],
            category_ids=[str(c) for c in log["category_id"][:3]],
        )
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds) as channel:
            answer = ranker_pb2_grpc.RankerStub(channel).Rank(request, timeout=30)
        assert len(answer.scores) == 3 and not answer.degraded
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, pytest.raises(grpc.RpcError):
            ranker_pb2_grpc.RankerStub(channel).Rank(request, timeout=5)
    finally:
        launch.stop(proc)
