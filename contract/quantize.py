"""Stored knowledge dtypes (``float32`` | ``float16`` | ``int8``) and the one :func:`dequantize` every
reader uses (GKC's read path, ``gkc.bundle_reader.BundleReader``, hence the trainer and the ranker).

A version's vectors are stored as *rows* of bytes, one per entry (a Redis value, a cached item row, a
bundle row), whose layout its dtype fixes:

- ``float32``: ``dim`` little-endian float32 (4 × dim bytes), the values themselves;
- ``float16``: ``dim`` little-endian float16 (2 × dim bytes); values beyond ±65504 cannot be stored
  (refused, never silently infinite);
- ``int8``: ``dim`` int8 codes then one little-endian float32 scale (dim + 4 bytes). Symmetric per row:
  ``scale = max|x| / 127``, ``q = round(x / scale)``, ``x̂ = q × scale``, so ``|x - x̂| ≤ scale / 2 =
  max|x| / 254`` elementwise (an all-zero row has scale 0 and reads back as zeros).

Quantizing is deterministic (row by row, numpy's round-half-to-even), so exporting at a dtype and
publishing a float32 bundle at that dtype give the same bytes, hence the same content checksum.
Numpy only (``gkc`` imports this; it never imports torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.errors import InvalidArgument

FLOAT32, FLOAT16, INT8 = "float32", "float16", "int8"
#: Stored dtypes, in order of size.
DTYPES = (FLOAT32, FLOAT16, INT8)
#: How each dtype's values are held in a bundle's ``*_vectors.npy`` (int8 adds ``*_scales.npy``).
STORAGE: dict[str, np.dtype[Any]] = {FLOAT32: np.dtype("<f4"), FLOAT16: np.dtype("<f2"), INT8: np.dtype("i1")}
SCALE_DTYPE = np.dtype("<f4")
INT8_MAX = 127
FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InvalidArgument(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes of one stored row of ``dim`` values."""
    if dtype == INT8:
        return dim + SCALE_DTYPE.itemsize
    return STORAGE[check_dtype(dtype)].itemsize * dim


def quantize(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 ``[n, dim]`` → (values in ``STORAGE[dtype]``, per-row scales ``[n]`` for int8 else None).

    Raises :class:`InvalidArgument` for values a dtype cannot hold (non-finite; beyond float16's range)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"vectors must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidArgument("vectors contain NaN or inf")
    check_dtype(dtype)
    if dtype == FLOAT32:
        return x, None
    if dtype == FLOAT16:
        if x.size and float(np.abs(x).max()) > FLOAT16_MAX:
            raise InvalidArgument(f"a value beyond ±{FLOAT16_MAX:.0f} cannot be stored as float16")
        return x.astype(STORAGE[FLOAT16]), None
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    scales = (amax / np.float32(INT8_MAX)).astype(SCALE_DTYPE)
    inv = np.divide(np.float32(1.0), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(np.rint(x * inv[:, None]), -INT8_MAX, INT8_MAX).astype(STORAGE[INT8])
    return q, scales


def encode_rows(values: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Stored values (and int8 scales) → the stored rows, ``uint8 [n, row_bytes]`` (a view for floats)."""
    v = np.ascontiguousarray(values)
    n = len(v)
    raw = v.view(np.uint8).reshape(n, -1) if v.size else np.zeros((n, 0), np.uint8)
    if scales is None:
        return raw
    s = np.ascontiguousarray(scales, dtype=SCALE_DTYPE).view(np.uint8).reshape(n, SCALE_DTYPE.itemsize)
    return np.concatenate([raw, s], axis=1)


def dequantize(rows: bytes | np.ndarray, dtype: str, dim: int) -> np.ndarray:
    """Stored rows (bytes, or ``uint8 [n, row_bytes]``) of ``dtype`` → float32 ``[n, dim]``: the one
    place where stored knowledge becomes numbers. Raises :class:`ValueError` when the bytes are not
    whole rows of that layout."""
    width = row_bytes(dtype, dim)
    buf = np.frombuffer(rows, np.uint8) if isinstance(rows, bytes | bytearray | memoryview) else rows
    flat = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
    if width == 0 or flat.size % width:
        if flat.size == 0:
            return np.zeros((0, dim), np.float32)
        raise ValueError(f"{flat.size} bytes are not whole {dtype} rows of {dim} values ({width} bytes)")
    table = flat.reshape(-1, width)
    if dtype == FLOAT32:
        return table.view(STORAGE[FLOAT32]).copy()
    if dtype == FLOAT16:
        return table.view(STORAGE[FLOAT16]).astype(np.float32)
    q = table[:, :dim].view(STORAGE[INT8]).astype(np.float32)
    scales = np.ascontiguousarray(table[:, dim:]).view(SCALE_DTYPE)
    return q * scales


def error_bound(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """The largest elementwise |x - dequantize(quantize(x))| the layout allows, per element."""
    x = np.asarray(vectors, dtype=np.float32)
    if dtype == FLOAT32:
        return np.zeros_like(x)
    if dtype == FLOAT16:
        # half an ulp: 2^-11 relative for normal values, 2^-25 absolute in the subnormal range
        return np.maximum(np.abs(x) * 2.0**-11, 2.0**-25).astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.zeros((len(x), 1), np.float32)
    # half a step, plus float32 rounding of the scale and the product
    return np.broadcast_to(amax / (2 * INT8_MAX) * (1 + 1e-5) + 1e-30, x.shape).astype(np.float32)
