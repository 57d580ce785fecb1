"""Stored dtypes through a real GKC (issue 13, deliver 1): publish at float32 / float16 / int8, read back
with BatchGet (both wire formats) within the dtype's bound and bit-equal to the bundle reader; a bundle
whose dtype does not match its arrays, or with garbage scales, is refused with 422."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from contract import quantize as quant
from gkc import bundle as gkc_bundle
from gkc.bundle_reader import BundleReader
from gkc.bundle_writer import convert
from gkc.client import GkcClient, GkcOpsClient, tar_bundle


def _bound(want: np.ndarray, dtype: str, wire16: bool) -> np.ndarray:
    bound = quant.error_bound(np.atleast_2d(want), dtype).reshape(want.shape)
    if wire16:  # the float16 wire adds half an ulp of its own
        bound = bound + np.maximum(np.abs(want) * 2.0**-10, 2.0**-24)
    return bound


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("at", ["export", "publish"])
def test_publish_at_each_dtype_reads_back_within_its_bound(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path, dtype: str, at: str
) -> None:
    f32_path = make_bundle(tmp_path / "f32", seed=21)
    f32 = BundleReader.open(f32_path)
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    if at == "export":  # the bundle is stored at the dtype already
        path = convert(f32.bundle, dtype, tmp_path / "q") if dtype != "float32" else f32_path
        result = ops.publish(path, progress=False)
    else:  # a float32 bundle, stored at the dtype by GKC
        path = convert(f32.bundle, dtype, tmp_path / "q") if dtype != "float32" else f32_path
        result = ops.publish(f32_path, progress=False, dtype=dtype)
    version = result["version"]
    stored = BundleReader.open(path)
    assert result["identity"]["checksum"] == stored.checksum  # same content, same identity either way
    record = ops.version(version)
    assert record["manifest"]["dtype"] == dtype
    items = [str(i) for i in f32.bundle.item_ids[:60]] + ["missing-item"]
    cats = [f"c{n % 7}" for n in range(len(items))]
    for wire16 in (False, True):
        with GkcClient(gkc_service.grpc_addr, timeout_s=5, float16=wire16) as client:
            for user in (str(f32.bundle.user_ids[2]), "cold-user"):
                got = client.batch_get(user, items, cats, version)
                exact = stored.batch_get(user, items, cats)
                full = f32.batch_get(user, items, cats)
                assert got.checksum == stored.checksum
                for name in ("user", "items", "ucs"):
                    g, w = getattr(got, name), getattr(full, name)
                    assert (np.abs(g - w) <= _bound(w, dtype, wire16)).all(), (name, wire16)
                    if not wire16:  # the same dequantize on both sides: the same bits
                        assert g.tobytes() == getattr(exact, name).tobytes(), name
                assert got.item_found.tolist() == full.item_found.tolist()
                assert got.uc_found.tolist() == full.uc_found.tolist()
    if dtype == "int8":
        raw = GkcClient(gkc_service.grpc_addr).batch_get_raw(
            str(f32.bundle.user_ids[2]), items, cats, version
        )
        assert raw.items.dim == f32.bundle.manifest.dims.item  # the wire stays float32 rows


@pytest.mark.parametrize("damage", ["float-vectors-in-int8", "nan-scale", "unknown-dtype", "bad-query"])
def test_dtype_mismatch_or_garbage_is_refused_with_422(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path, damage: str
) -> None:
    f32 = make_bundle(tmp_path / "f32", seed=22)
    path = convert(gkc_bundle.load(f32), "int8", tmp_path / "q")
    manifest = json.loads((path / "manifest.json").read_text())
    if damage == "float-vectors-in-int8":
        arr = np.load(path / "item_vectors.npy").astype(np.float32)
        np.save(path / "item_vectors.npy", arr)
    elif damage == "nan-scale":
        scales = np.load(path / "uc_scales.npy")
        scales[0] = np.nan
        np.save(path / "uc_scales.npy", scales)
    elif damage == "unknown-dtype":
        manifest["dtype"] = "int4"
    for name in gkc_bundle.array_files("int8"):  # checksums agree: only the content check can refuse it
        manifest["checksums"][name] = gkc_bundle._sha256(path / name)
    (path / "manifest.json").write_text(json.dumps(manifest))
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    before = ops.versions(include_all=True)
    query = "?dtype=int7" if damage == "bad-query" else ""
    response = httpx.post(
        f"{gkc_service.http_url}/v1/versions{query}",
        content=tar_bundle(path, tmp_path / "upload.tar").read_bytes(),
        headers={"Authorization": f"Bearer {gkc_service.token}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert ops.versions(include_all=True) == before


def test_a_version_reports_its_entries_and_measured_bytes(
    gkc_service, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """Deliver 5: ``GET /v1/versions/{v}`` and ``/metrics`` give each version's entries and the Redis
    memory it took; int8 takes a fraction of float32's bytes for the same entries."""
    path = make_bundle(tmp_path / "b", seed=23, users=200, items=1000, categories=10, dim=32, uc_dim=96)
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    m = gkc_bundle.read_manifest(path)
    entries = m.counts.users + m.counts.items + m.counts.user_categories
    sizes = {}
    for dtype in ("float32", "int8"):
        version = ops.publish(path, progress=False, dtype=dtype)["version"]
        record = ops.version(version)
        assert record["entries"] == entries and record["dtype"] == dtype
        payload = sum(
            n * quant.row_bytes(dtype, d)
            for n, d in ((m.counts.users, 32), (m.counts.items, 32), (m.counts.user_categories, 96))
        )
        # measured by Redis: at least the vectors themselves, at most a few times them
        assert payload < record["bytes"] < 4 * payload + 200 * entries, (dtype, record["bytes"], payload)
        sizes[dtype] = record["bytes"]
        text = httpx.get(f"{gkc_service.http_url}/metrics").text
        assert (
            f'keep_gkc_version_bytes{{dtype="{dtype}",version="{version}"}} {float(record["bytes"])}' in text
        )
        assert f'keep_gkc_version_entries{{dtype="{dtype}",version="{version}"}} {float(entries)}' in text
    assert sizes["int8"] < 0.6 * sizes["float32"]
