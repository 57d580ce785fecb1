"""A real GKC process (gRPC + REST on free ports) against real private Redis servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from gkc import bundle as gkc_bundle
from gkc.bundle_reader import BundleReader
from gkc.client import GkcClient, GkcOpsClient, tar_bundle
from gkc.local_redis import EmbeddedRedis
from protos import gkc_pb2, gkc_pb2_grpc
from ranker.gkc_source import GkcKnowledgeSource
from services.errors import Conflict, InvalidArgument, NotFound, Unauthenticated, Unavailable


def _tar_bytes(path: Path, tmp: Path) -> bytes:
    return tar_bundle(path, tmp / "upload.tar").read_bytes()


def test_publish_then_batch_get_matches_bundle_bytes(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_bundle(tmp_path / "b", seed=11)
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    version = ops.publish(path, progress=False)["version"]
    reader = BundleReader.open(path, version=version)
    b = reader.bundle
    with GkcClient(gkc_service.grpc_addr, timeout_s=5) as client:
        items = [str(i) for i in b.item_ids[:40]] * 2 + ["missing-item"]
        cats = [f"c{n % 7}" for n in range(len(items))]
        for user in [str(b.user_ids[3]), "cold-user"]:
            got = client.batch_get(user, items, cats, version)
            want = reader.batch_get(user, items, cats, version)
            assert got.version == version
            for name in ("user", "items", "item_found", "item_index", "ucs", "uc_found", "uc_index"):
                assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), name
            assert got.user_found == want.user_found
        raw = client.batch_get_raw(str(b.user_ids[3]), items, cats, version)
        assert raw.items.rows == 41  # repeats travel once
        assert raw.items.data[: 40 * 4 * b.manifest.dims.item] == b.item_vectors[:40].tobytes()
    listed = {v["version"]: v for v in ops.versions()}
    assert listed[version]["state"] == "ready"
    assert listed[version]["manifest"]["counts"]["items"] == len(b.item_ids)


def test_float16_wire_halves_bytes_and_stays_close(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_bundle(tmp_path / "b", seed=12)
    version = GkcOpsClient(gkc_service.http_url, gkc_service.token).publish(path, progress=False)["version"]
    reader = BundleReader.open(path, version=version)
    items = [str(i) for i in reader.bundle.item_ids[:50]]
    cats = ["c1"] * 50
    full = GkcClient(gkc_service.grpc_addr).batch_get_raw("u1", items, cats, version)
    half = GkcClient(gkc_service.grpc_addr, float16=True)
    assert len(half.batch_get_raw("u1", items, cats, version).items.data) * 2 == len(full.items.data)
    got = half.batch_get("u1", items, cats, version)
    want = reader.batch_get("u1", items, cats, version)
    np.testing.assert_allclose(got.items, want.items, rtol=2e-3, atol=2e-3)
    # the ranker's own client (RANKER_GKC_FLOAT16) asks for the same wire format
    ranker_half = asyncio.run(_ranker_lookup(gkc_service.grpc_addr, items, cats, version))
    np.testing.assert_array_equal(ranker_half.items, got.items)
    np.testing.assert_array_equal(ranker_half.ucs, got.ucs)
    assert not np.array_equal(ranker_half.items, want.items)  # rounded: it did travel as float16


async def _ranker_lookup(addr: str, items: list[str], cats: list[str], version: int) -> Any:
    source = GkcKnowledgeSource(addr, float16=True)
    try:
        return await source.batch_get("u1", items, cats, version, timeout_s=10)
    finally:
        await source.close()


def test_bad_requests_have_the_right_codes(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    GkcOpsClient(gkc_service.http_url, gkc_service.token).publish(make_bundle(tmp_path / "b"), progress=False)
    client = GkcClient(gkc_service.grpc_addr)
    with pytest.raises(NotFound):
        client.batch_get("u1", ["i1"], ["c1"], version=987654)
    with pytest.raises(InvalidArgument):
        client.batch_get("u1", [], [])
    with pytest.raises(InvalidArgument, match="limit"):
        client.batch_get("u1", [f"i{n}" for n in range(1001)], ["c1"] * 1001)
    with pytest.raises(InvalidArgument, match="parallel"):
        client.batch_get_raw("u1", ["i1", "i2"], ["c1"])
    # the standard health service and reflection are there
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(gkc_service.grpc_addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="keep.gkc.v1.Gkc")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = gkc_pb2_grpc.GkcStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.BatchGet(gkc_pb2.BatchGetRequest(user_id="", item_ids=["i1"], category_ids=["c1"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_writes_need_the_token(gkc_service, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    body = _tar_bytes(make_bundle(tmp_path / "b"), tmp_path)
    url = gkc_service.http_url
    for headers in ({}, {"Authorization": "Bearer wrong-token-value"}, {"Authorization": gkc_service.token}):
        assert httpx.post(f"{url}/v1/versions", content=body, headers=headers).status_code == 401
        assert httpx.post(f"{url}/v1/versions/1/activate", headers=headers).status_code == 401
        assert httpx.delete(f"{url}/v1/versions/1", headers=headers).status_code == 401
    with pytest.raises(Unauthenticated):
        GkcOpsClient(url, "wrong-token-value").publish(tmp_path / "b", progress=False)
    assert httpx.get(f"{url}/v1/versions").status_code == 200
    assert gkc_service.token not in gkc_service.log()


def test_publish_checks_the_token_before_it_uploads(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong or missing token is told by a cheap authenticated request before any upload, with what
    a token must be (issue 18: publish uploaded the whole bundle, then said 401)."""
    bundle = make_bundle(tmp_path / "b")
    uploads: list[str] = []
    real_post = httpx.Client.post

    def post(self: httpx.Client, *a: Any, **k: Any) -> httpx.Response:
        uploads.append(str(a))
        return real_post(self, *a, **k)

    monkeypatch.setattr(httpx.Client, "post", post)
    with pytest.raises(Unauthenticated, match="at least 8 characters"):
        GkcOpsClient(gkc_service.http_url, "wrong-token-value").publish(bundle, progress=False)
    monkeypatch.delenv("GKC_API_TOKEN", raising=False)
    with pytest.raises(Unauthenticated, match="no GKC token: pass --token or set GKC_API_TOKEN"):
        GkcOpsClient(gkc_service.http_url, "").publish(bundle, progress=False)
    assert uploads == []  # neither sent a byte of the bundle
    assert httpx.get(f"{gkc_service.http_url}/v1/auth").status_code == 401


def test_the_client_takes_int_ids_and_is_importable_from_the_package(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """``from gkc import GkcClient`` works and int64 ids are sent as their canonical strings (issue 18)."""
    from gkc import GkcClient as PackageClient

    rng = np.random.default_rng(5)
    built = gkc_bundle.build(
        user_ids=[7, 8],
        user_vectors=rng.normal(size=(2, 4)),
        item_ids=[100, 101, 2**40],
        item_vectors=rng.normal(size=(3, 4)),
        uc_user_ids=[7],
        uc_category_ids=[3],
        uc_vectors=rng.normal(size=(1, 2)),
    )
    path = gkc_bundle.save(built, tmp_path / "ints")
    version = GkcOpsClient(gkc_service.http_url, gkc_service.token).publish(path, progress=False)["version"]
    with PackageClient(gkc_service.grpc_addr) as client:
        got = client.batch_get(7, [101, 2**40, 5], [3, 3, 3], version)
        want = BundleReader.open(path).batch_get("7", ["101", str(2**40), "5"], ["3", "3", "3"])
    assert (
        got.item_found.tolist() == [True, True, False] and got.user_found and got.uc_found.tolist() == [True]
    )
    np.testing.assert_array_equal(got.items, want.items)
    assert got.checksum == want.checksum == gkc_bundle.read_manifest(path).content_checksum()


@pytest.mark.parametrize("damage", ["truncate", "dims", "dtype", "not-a-tar", "missing-file"])
def test_corrupt_bundle_is_refused_with_422(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path, damage: str
) -> None:
    path = make_bundle(tmp_path / "b", seed=5)
    if damage == "truncate":
        data = (path / "item_vectors.npy").read_bytes()
        (path / "item_vectors.npy").write_bytes(data[: len(data) // 2])
    elif damage == "dims":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["dims"]["uc"] += 1
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "dtype":
        np.save(path / "uc_vectors.npy", np.load(path / "uc_vectors.npy").astype(np.float64))
    elif damage == "missing-file":
        (path / "uc_vectors.npy").unlink()
    body = b"this is not a tar file" * 100 if damage == "not-a-tar" else _tar_bytes(path, tmp_path)
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    before = ops.versions(include_all=True)
    response = httpx.post(
        f"{gkc_service.http_url}/v1/versions",
        content=body,
        headers={"Authorization": f"Bearer {gkc_service.token}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert ops.versions(include_all=True) == before


def test_activate_and_delete(gkc_service, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    a = ops.publish(make_bundle(tmp_path / "a", seed=1), progress=False)["version"]
    b = ops.publish(make_bundle(tmp_path / "b", seed=2), progress=False)["version"]
    assert ops.activate(b)["active"] is True
    client = GkcClient(gkc_service.grpc_addr)
    deadline = time.monotonic() + 10  # other worker processes see the pointer within GKC_REGISTRY_TTL_S
    while client.batch_get("u1", ["i1"], ["c1"]).version != b and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.batch_get("u1", ["i1"], ["c1"]).version == b
    with pytest.raises(Conflict):
        ops.delete(b)
    assert ops.delete(a)["state"] == "retiring"
    while time.monotonic() < deadline:  # other workers drop it within GKC_REGISTRY_TTL_S
        try:
            client.batch_get("u1", ["i1"], ["c1"], version=a)
        except NotFound:
            break
        time.sleep(0.05)
    with pytest.raises(NotFound):
        client.batch_get("u1", ["i1"], ["c1"], version=a)
    with pytest.raises(NotFound):
        ops.activate(10**6)
    while any(v["version"] == a for v in ops.versions(include_all=True)) and time.monotonic() < deadline + 10:
        time.sleep(0.05)  # the janitor deletes the data in the background, then forgets the version
    assert all(v["version"] != a for v in ops.versions(include_all=True))
    text = httpx.get(f"{gkc_service.http_url}/metrics").text
    assert 'keep_gkc_request_seconds_count{method="BatchGet",status="OK"}' in text
    assert 'keep_gkc_versions{state="ready"}' in text


def test_redis_down_gives_unavailable_then_recovers(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    try:
        svc = start_gkc(redis.url, GKC_REDIS_TIMEOUT_S="0.3")
        version = GkcOpsClient(svc.http_url, svc.token).publish(make_bundle(tmp_path / "b"), progress=False)[
            "version"
        ]
        client = GkcClient(svc.grpc_addr, timeout_s=3.0)
        assert client.batch_get("u1", ["i1", "i2"], ["c1", "c2"]).version == version
        redis.stop()
        # UNAVAILABLE, not DEADLINE_EXCEEDED: the server answered within the client's 3 s deadline.
        with pytest.raises(Unavailable):
            client.batch_get("u1", ["i3"], ["c1"])
        assert httpx.get(f"{svc.http_url}/healthz").status_code == 503
        redis.start()
        got = None
        for _ in range(50):
            try:
                got = client.batch_get("u1", ["i3"], ["c1"])
                break
            except Unavailable:
                time.sleep(0.1)
        assert got is not None and got.version == version
    finally:
        redis.stop()


def test_embedded_redis_keeps_data_across_restart(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "gkc-data")
    svc = start_gkc(GKC_DATA_DIR=data_dir)
    version = GkcOpsClient(svc.http_url, svc.token).publish(make_bundle(tmp_path / "b"), progress=False)[
        "version"
    ]
    assert svc.stop() == 0  # SIGTERM: graceful
    again = start_gkc(GKC_DATA_DIR=data_dir)
    assert [v["version"] for v in GkcOpsClient(again.http_url).versions()] == [version]
    reader = BundleReader.open(tmp_path / "b", version=version)
    got = GkcClient(again.grpc_addr).batch_get("u2", ["i5"], ["c0"])
    assert (
        got.version == version
        and got.items.tobytes() == reader.batch_get("u2", ["i5"], ["c0"]).items.tobytes()
    )


def test_placeholder_token_is_refused(start_gkc) -> None:
    with pytest.raises(RuntimeError, match="GKC_API_TOKEN"):
        start_gkc(GKC_API_TOKEN="changeme")


def test_upload_size_limit(start_gkc, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    svc = start_gkc(GKC_MAX_UPLOAD_BYTES="1000")
    body = _tar_bytes(make_bundle(tmp_path / "b"), tmp_path)
    r = httpx.post(
        f"{svc.http_url}/v1/versions", content=body, headers={"Authorization": f"Bearer {svc.token}"}
    )
    assert r.status_code == 413
    chunked = httpx.post(
        f"{svc.http_url}/v1/versions",
        content=iter([body[i : i + 500] for i in range(0, len(body), 500)]),
        headers={"Authorization": f"Bearer {svc.token}"},
    )
    assert chunked.status_code == 413


def test_cli_publish_and_versions(gkc_service, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "GKC_API_TOKEN": gkc_service.token}
    cmd = [sys.executable, "-m", "trainer"]
    out = subprocess.run(
        [
            *cmd,
            "publish",
            str(make_bundle(tmp_path / "b")),
            "--gkc-api",
            gkc_service.http_url,
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    version = int(out.stdout.strip())
    # issue 18: whether the new version became active was not said
    assert f"version {version} is ready" in out.stderr and "active" in out.stderr
    listed = subprocess.run(
        [*cmd, "versions", "list", "--json", "--gkc-api", gkc_service.http_url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version in [v["version"] for v in json.loads(listed.stdout)]
    table = subprocess.run(
        [*cmd, "versions", "list", "--gkc-api", gkc_service.http_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert table[0].split()[:3] == ["version", "state", "active"]
    assert any(line.split()[:2] == [str(version), "ready"] for line in table[1:])
    # issue 18: --gkc (gRPC elsewhere) and a host:port are refused in one line naming --gkc-api
    for wrong in (["--gkc", gkc_service.http_url], ["--gkc-api", "127.0.0.1:50051"]):
        bad = subprocess.run([*cmd, "versions", "list", *wrong], capture_output=True, text=True)
        assert bad.returncode == 2 and "--gkc-api" in bad.stderr and len(bad.stderr.splitlines()) == 1
    refused = subprocess.run(
        [
            *cmd,
            "versions",
            "activate",
            str(version),
            "--gkc-api",
            gkc_service.http_url,
            "--token",
            "bad-token-x",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "GKC_API_TOKEN"},
    )
    assert refused.returncode != 0 and "401" in refused.stderr


def test_client_deadline_is_honoured_when_redis_hangs(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """A stuck (SIGSTOPped) Redis: the call ends at the client's deadline or with UNAVAILABLE, never hangs."""
    import os
    import signal

    from services.errors import DeadlineExceeded

    redis = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    try:
        svc = start_gkc(redis.url, GKC_REDIS_TIMEOUT_S="2.0")
        GkcOpsClient(svc.http_url, svc.token).publish(make_bundle(tmp_path / "b"), progress=False)
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(DeadlineExceeded):
                GkcClient(svc.grpc_addr, timeout_s=0.3).batch_get("u1", ["i7"], ["c1"])
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert GkcClient(svc.grpc_addr, timeout_s=5).batch_get("u1", ["i7"], ["c1"]).user_found
    finally:
        redis.stop()


def _batchget_count(families: Any) -> float:
    return sum(
        s.value
        for f in families
        if f.name == "keep_gkc_request_seconds"
        for s in f.samples
        if s.name == "keep_gkc_request_seconds_count" and s.labels.get("method") == "BatchGet"
    )


def _per_process_batchgets(metrics_dir: Path, scratch: Path) -> dict[str, float]:
    """BatchGet count of each process, read from its own mmap file (one process per collector)."""
    out = {}
    for db in metrics_dir.glob("histogram_*.db"):
        one = scratch / db.stem
        one.mkdir(parents=True, exist_ok=True)
        shutil.copy(db, one / db.name)
        out[db.stem] = _batchget_count(MultiProcessCollector(None, str(one)).collect())
    return out


def test_metrics_count_requests_served_by_every_worker(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "histogram_1.db").write_bytes(b"stale file of an earlier run")  # must be cleaned
    svc = start_gkc(GKC_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    version = GkcOpsClient(svc.http_url, svc.token).publish(make_bundle(tmp_path / "b"), progress=False)[
        "version"
    ]
    sent = 0
    deadline = time.monotonic() + 60
    per_process: dict[str, float] = {}
    # SO_REUSEPORT spreads connections, not requests: new channels until both processes have served
    while sum(1 for n in per_process.values() if n > 0) < 2:
        assert time.monotonic() < deadline, f"one process served everything: {per_process}"
        for _ in range(4):
            with GkcClient(svc.grpc_addr, timeout_s=5) as client:
                for _ in range(3):
                    client.batch_get("u1", ["i1", "i2", "i1"], ["c0", "c1", "c0"], version)
                    sent += 1
        per_process = _per_process_batchgets(metrics_dir, tmp_path / "scratch")
    assert "histogram_1" not in per_process and len(per_process) == 2
    body = httpx.get(f"{svc.http_url}/metrics", timeout=5).text
    families = list(text_string_to_metric_families(body))
    assert _batchget_count(families) == sent == sum(per_process.values())
    lookups = {
        (s.labels["block"], s.labels["result"]): s.value
        for f in families
        if f.name == "keep_gkc_lookups"
        for s in f.samples
        if s.name == "keep_gkc_lookups_total"
    }
    assert lookups["item", "hit"] == 2 * sent  # two unique items per request, both found
    cache = {
        s.labels["result"]: s.value for f in families if f.name == "keep_gkc_item_cache" for s in f.samples
    }
    assert cache["hit"] + cache["miss"] == 2 * sent
    assert "keep_gkc_item_cache_hit_ratio" in body and "keep_gkc_active_version 1.0" in body


def test_a_killed_worker_is_started_again(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """A gRPC worker killed from outside (the OOM killer, a native crash) is spawned again and counted;
    the new one serves."""
    metrics_dir = tmp_path / "prom"
    svc = start_gkc(GKC_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    version = GkcOpsClient(svc.http_url, svc.token).publish(make_bundle(tmp_path / "b"), progress=False)[
        "version"
    ]
    (first,) = [c for c in procfs.children(svc.proc.pid) if "spawn_main" in procfs.cmdline(c)]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    restarted: list[int] = []
    while not restarted:
        assert time.monotonic() < deadline, "the worker was not started again:\n" + svc.log()[-2000:]
        time.sleep(0.2)
        restarted = [
            c
            for c in procfs.children(svc.proc.pid)
            if "spawn_main" in procfs.cmdline(c) and c != first and procfs.alive(c)
        ]
    (second,) = restarted
    before = procfs.cpu_ticks(second)
    deadline = time.monotonic() + 60
    while procfs.cpu_ticks(second) == before:  # new connections until the kernel gives it some
        assert time.monotonic() < deadline, "the restarted worker served nothing"
        for _ in range(4):
            with GkcClient(svc.grpc_addr, timeout_s=5) as client:
                for _ in range(3):
                    client.batch_get("u1", ["i1", "i2"], ["c0", "c1"], version)
    body = httpx.get(f"{svc.http_url}/metrics", timeout=5).text
    assert "keep_gkc_worker_restarts_total 1.0" in body
    assert "died with exit code -9" in svc.log()
