"""Stored dtypes (issue 13, deliver 1): quantize / dequantize bounds, bundles at each dtype, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract import quantize as quant
from gkc import bundle as B
from gkc.bundle_reader import BundleReader
from gkc.bundle_writer import convert
from services.errors import InvalidArgument


def _vectors(seed: int = 0, n: int = 500, dim: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # rows of very different magnitudes, a zero row, a row with one large value, exact extremes
    x = rng.normal(size=(n, dim)) * rng.lognormal(0, 2, size=(n, 1))
    x[0] = 0.0
    x[1, 3] = 1e3
    x[2] = np.linspace(-1, 1, dim)
    return x.astype(np.float32)


@pytest.mark.parametrize("dtype", quant.DTYPES)
def test_round_trip_stays_within_the_documented_bound(dtype: str) -> None:
    x = _vectors()
    values, scales = quant.quantize(x, dtype)
    rows = quant.encode_rows(values, scales)
    assert rows.shape == (len(x), quant.row_bytes(dtype, x.shape[1]))
    back = quant.dequantize(rows.tobytes(), dtype, x.shape[1])
    assert back.dtype == np.float32 and back.shape == x.shape
    err = np.abs(back - x)
    assert (err <= quant.error_bound(x, dtype)).all(), float((err - quant.error_bound(x, dtype)).max())
    assert not back[0].any()  # a zero row reads back as zeros
    if dtype == quant.FLOAT32:
        assert back.tobytes() == x.tobytes()
    if dtype == quant.INT8:
        # the bound is tight: half a step of the row's scale is reached on some element
        assert float((err / quant.error_bound(x, dtype)).max()) > 0.5
        assert int(np.abs(values).max()) == quant.INT8_MAX and int(values.min()) >= -quant.INT8_MAX


def test_int8_rows_are_one_byte_per_value_plus_a_scale() -> None:
    assert quant.row_bytes("int8", 192) == 196
    assert quant.row_bytes("float16", 192) == 384
    assert quant.row_bytes("float32", 192) == 768


def test_values_a_dtype_cannot_hold_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="float16"):
        quant.quantize(np.array([[7e4, 1.0]], np.float32), "float16")
    with pytest.raises(InvalidArgument, match="NaN"):
        quant.quantize(np.array([[np.nan, 1.0]], np.float32), "int8")
    with pytest.raises(InvalidArgument, match="not one of"):
        quant.quantize(np.zeros((1, 2), np.float32), "bfloat16")
    with pytest.raises(ValueError, match="whole"):
        quant.dequantize(b"\x00" * 7, "int8", 4)


def _build(dtype: str, seed: int = 3) -> B.Bundle:
    rng = np.random.default_rng(seed)
    return B.build(
        user_ids=["u0", "u1", "u2"],
        user_vectors=rng.normal(size=(3, 8)),
        item_ids=["i0", "i1", "i2", "i3"],
        item_vectors=rng.normal(size=(4, 8)),
        uc_user_ids=["u0", "u0", "u2"],
        uc_category_ids=["c0", "c1", "c0"],
        uc_vectors=rng.normal(size=(3, 6)),
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_bundle_at_a_dtype_saves_loads_and_reads_within_the_bound(tmp_path: Path, dtype: str) -> None:
    full = _build("float32")
    path = B.save(_build(dtype), tmp_path / dtype)
    loaded = B.load(path)
    assert loaded.manifest.dtype == dtype
    assert set(loaded.manifest.checksums) == set(B.array_files(dtype))
    assert loaded.uc_vectors.dtype == quant.STORAGE[dtype]
    reader = BundleReader(loaded)
    got = reader.batch_get("u0", ["i1", "i3", "nope"], ["c0", "c1", "c9"])
    want = BundleReader(full).batch_get("u0", ["i1", "i3", "nope"], ["c0", "c1", "c9"])
    for name in ("user", "items", "ucs"):
        np.testing.assert_array_less(
            np.abs(getattr(got, name) - getattr(want, name)),
            quant.error_bound(np.atleast_2d(getattr(want, name)), dtype).reshape(getattr(want, name).shape)
            + 1e-12,
        )
    assert not got.items[2].any() and got.item_found.tolist() == [True, True, False]
    # dtype is part of the identity: the same vectors stored otherwise are other knowledge
    assert (
        loaded.manifest.content_checksum()
        != B.load(B.save(full, tmp_path / "f32")).manifest.content_checksum()
    )


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_converting_a_float32_bundle_equals_exporting_at_that_dtype(tmp_path: Path, dtype: str) -> None:
    """Publish-time conversion (``?dtype=``) and export-time quantization give the same bytes and checksum."""
    f32 = B.load(B.save(_build("float32"), tmp_path / "f32"))
    converted = B.load(convert(f32, dtype, tmp_path / "conv"))
    direct = B.load(B.save(_build(dtype), tmp_path / "direct"))
    assert converted.manifest.checksums == direct.manifest.checksums
    assert converted.manifest.content_checksum() == direct.manifest.content_checksum()
    with pytest.raises(B.BundleError, match="only a float32"):
        convert(converted, "float32", tmp_path / "back")


def test_a_float32_checksum_is_unchanged_by_the_dtype_field(tmp_path: Path) -> None:
    """Identities of float32 bundles published before dtypes existed stay valid (pinned models)."""
    m = B.load(B.save(_build("float32"), tmp_path / "b")).manifest
    body = {
        "format_version": m.format_version,
        "dims": {"user": m.dims.user, "item": m.dims.item, "uc": m.dims.uc},
        "counts": {"users": 3, "items": 4, "user_categories": 3},
        "checksums": dict(sorted(m.checksums.items())),
    }
    import hashlib

    assert m.content_checksum() == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize(
    "damage", ["manifest-says-int8", "float-vectors-in-int8", "nan-scale", "negative-scale", "no-scales"]
)
def test_dtype_mismatch_and_garbage_are_refused(tmp_path: Path, damage: str) -> None:
    dtype = "float32" if damage == "manifest-says-int8" else "int8"
    path = B.save(_build(dtype), tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    if damage == "manifest-says-int8":
        manifest["dtype"] = "int8"
    elif damage == "float-vectors-in-int8":
        np.save(path / "uc_vectors.npy", np.zeros((3, 6), np.float32))
    elif damage in ("nan-scale", "negative-scale"):
        scales = np.load(path / "item_scales.npy")
        scales[1] = np.nan if damage == "nan-scale" else -1.0
        np.save(path / "item_scales.npy", scales)
    else:
        (path / "user_scales.npy").unlink()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(B.BundleError):
        B.load(path, verify_checksums=False)
    with pytest.raises(B.BundleError):
        B.load(path)


def test_an_unknown_dtype_in_the_manifest_is_refused(tmp_path: Path) -> None:
    path = B.save(_build("float32"), tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dtype"] = "bfloat16"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(B.BundleError, match="dtype"):
        B.read_manifest(path)
