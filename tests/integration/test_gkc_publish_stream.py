"""``POST /v1/versions`` streamed into the store (issue 13, deliver 3): a bundle's tar stream is written
as it arrives, against a real redis-server. In the order ``keep publish`` sends nothing is spooled; in
any other order the members that come early are spooled and the version is the same; a corrupt or
non-finite member found after entries were written leaves no version and no key behind."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from gkc import bundle as gkc_bundle
from gkc.bundle_writer import convert
from gkc.client import GkcOpsClient
from gkc.publish import publish
from gkc.publish_stream import StreamedPublish, StreamSettings
from gkc.redis_store import RedisStore
from gkc.store import READY
from services.errors import Unavailable
from tests.support.servers import GkcService, make_bundle

pytestmark = pytest.mark.redis


@pytest.fixture
def store(private_store: RedisStore) -> RedisStore:
    return private_store


def tar_bytes(root: Path, names: list[str], replace: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in names:
            data = (replace or {}).get(name, (root / name).read_bytes())
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def contents(store: RedisStore, version: int, b: gkc_bundle.Bundle) -> list[bytes | None]:
    """Every entry of ``b``'s ids as ``version`` stores them."""
    ns = next(r.namespace for r in store.records()[0] if r.version == version)
    got: list[bytes | None] = []
    for u in b.user_ids:
        got.append(store.read(ns, str(u), [], []).user)
    for u, c in zip(b.uc_user_ids, b.uc_category_ids, strict=True):
        got += store.read(ns, str(u), [str(c)], []).ucs
    got += store.read(ns, "\x00", [], [str(i) for i in b.item_ids]).items
    return got


def run(store: RedisStore, data: bytes, tmp_path: Path) -> tuple[StreamedPublish, int]:
    spool = tmp_path / f"spool{len(list(tmp_path.iterdir()))}"
    spool.mkdir()
    streamed = StreamedPublish(store, StreamSettings(batch=7), spool)
    return streamed, streamed.run(io.BufferedReader(io.BytesIO(data))).version


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_streamed_upload_stores_what_a_file_publish_stores(
    store: RedisStore, tmp_path: Path, dtype: str
) -> None:
    path = make_bundle(tmp_path / "b", users=30, items=50)
    if dtype != "float32":
        path = convert(gkc_bundle.load(path), dtype, tmp_path / dtype)
    bundle = gkc_bundle.load(path)
    names = sorted(p.name for p in path.iterdir())
    reference = publish(store, bundle, progress=False).version
    expected = contents(store, reference, bundle)
    assert None not in expected

    in_order, version = run(store, tar_bytes(path, gkc_bundle.stream_order(names)), tmp_path)
    assert in_order.spooled_members == 0  # ids, then vectors as they arrive: nothing on disk
    assert contents(store, version, bundle) == expected
    # the alphabetical order (vectors before their ids, the manifest in the middle): spooled, same
    early, again = run(store, tar_bytes(path, names), tmp_path)
    assert early.spooled_members > 0 and contents(store, again, bundle) == expected
    records = {r.version: r for r in store.records()[0]}
    assert records[version].state == records[again].state == READY
    assert records[version].manifest == records[reference].manifest
    assert all(not list(d.iterdir()) for d in tmp_path.glob("spool*"))  # spooled members removed


def _corrupted(path: Path, name: str, damage: str) -> dict[str, bytes]:
    """``name``'s bytes damaged at the end: ``flip`` keeps the manifest's checksum (so it fails);
    ``nan`` writes a NaN and gives the manifest the new checksum (so only the values are wrong)."""
    data = bytearray((path / name).read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF
        return {name: bytes(data)}
    data[-4:] = np.array([np.nan], dtype="<f4").tobytes()
    manifest = json.loads((path / gkc_bundle.MANIFEST).read_text())
    manifest["checksums"][name] = hashlib.sha256(bytes(data)).hexdigest()
    return {name: bytes(data), gkc_bundle.MANIFEST: json.dumps(manifest).encode()}


@pytest.mark.parametrize(("damage", "reason"), [("flip", "checksum mismatch"), ("nan", "NaN")])
def test_a_bad_last_member_leaves_no_version_and_no_key(
    store: RedisStore, tmp_path: Path, damage: str, reason: str
) -> None:
    path = make_bundle(tmp_path / "b", users=30, items=50)
    bundle = gkc_bundle.load(path)
    active = publish(store, bundle, progress=False).version
    before = store.client.dbsize()
    names = gkc_bundle.stream_order(sorted(p.name for p in path.iterdir()))
    assert names[-1] == "user_vectors.npy"  # written last: the others are in the store when it fails
    streamed = StreamedPublish(store, StreamSettings(batch=7), tmp_path)
    data = tar_bytes(path, names, _corrupted(path, "user_vectors.npy", damage))
    with pytest.raises(gkc_bundle.BundleError, match=reason):
        streamed.run(io.BufferedReader(io.BytesIO(data)))
    assert streamed.staging is not None  # it had begun writing
    assert [r.version for r in store.records()[0]] == [active]
    assert store.client.dbsize() == before  # the partial version's keys are gone
    assert contents(store, active, bundle)[0] is not None  # the served version is untouched


def test_over_rest_any_order_concurrent_uploads_and_a_cut_one(
    store: RedisStore, start_gkc: Callable[..., GkcService], tmp_path: Path
) -> None:
    """Through a real GKC: an upload in the alphabetical order, two at once (the second waits for the
    first; both land), and one cut half-way by its client (no version, no key left)."""
    svc = start_gkc(store.url)
    path = make_bundle(tmp_path / "b", users=30, items=50)
    names = sorted(p.name for p in path.iterdir())
    auth = {"Authorization": f"Bearer {svc.token}"}
    url = f"{svc.http_url}/v1/versions"
    alphabetical = httpx.post(url, content=tar_bytes(path, names), headers=auth, timeout=30)
    assert alphabetical.status_code == 201, alphabetical.text

    body = tar_bytes(path, gkc_bundle.stream_order(names))
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, content=body, headers=auth, timeout=30), range(2)))
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    versions = {a.json()["version"] for a in answers} | {alphabetical.json()["version"]}
    assert len(versions) == 3

    before = store.client.dbsize()

    # A client that declares the whole body, sends three quarters of it (the manifest, the ids, part
    # of the vectors) and goes away.
    host, port = svc.http_url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/versions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {svc.token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body[: len(body) * 3 // 4])
        time.sleep(0.5)  # the server has begun the version and written some of it
    deadline = time.monotonic() + 20
    while (store.client.dbsize(), len(store.records()[0])) != (before, 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (store.client.dbsize(), len(store.records()[0])) == (before, 3)
    assert "publishing v4" in svc.log() and "upload interrupted" in svc.log(), svc.log()[-2000:]
    listed = httpx.get(url, params={"all": "true"}, timeout=10).json()["versions"]
    assert sorted(v["version"] for v in listed) == sorted(versions)


def test_keep_publish_sends_the_upload_once_more_after_a_503(tmp_path: Path) -> None:
    """A streamed upload cannot be read twice by GKC, so the store failing mid-way is a 503 and the
    client sends the bundle again, once; any other answer is final. (A fake GKC: a real store failure
    at that point is what ``tests/reliability`` provoke, not something to time here.)"""
    path = make_bundle(tmp_path / "b")
    answers = [503, 201]
    bodies: list[bytes] = []

    def gkc(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth":
            return httpx.Response(200, json={"ok": True})
        bodies.append(request.read())
        status = answers.pop(0)
        return httpx.Response(status, json={"version": 1} if status == 201 else {"detail": "store failed"})

    client = GkcOpsClient("http://gkc.test", token="t" * 12)
    client.http = httpx.Client(base_url="http://gkc.test", transport=httpx.MockTransport(gkc))
    assert client.publish(path, progress=False) == {"version": 1}
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same whole upload, twice
    with tarfile.open(fileobj=io.BytesIO(bodies[0])) as tar:
        assert [m.name for m in tar] == gkc_bundle.stream_order([p.name for p in path.iterdir()])
    answers[:] = [503, 503]
    with pytest.raises(Unavailable):
        client.publish(path, progress=False)


def test_an_int8_upload_without_its_scales_is_refused(private_store: RedisStore, tmp_path: Path) -> None:
    path = convert(gkc_bundle.load(make_bundle(tmp_path / "b")), "int8", tmp_path / "int8")
    names = [
        n for n in gkc_bundle.stream_order(sorted(p.name for p in path.iterdir())) if n != "uc_scales.npy"
    ]
    with pytest.raises(gkc_bundle.BundleError, match=r"lacks \['uc_scales.npy'\]"):
        StreamedPublish(private_store, StreamSettings(), tmp_path).run(
            io.BufferedReader(io.BytesIO(tar_bytes(path, names)))
        )
    assert private_store.records()[0] == []
