"""The ``.npy`` files of a bundle: which arrays its manifest promises (:func:`expected_arrays`) and the
check of each file's header against that promise *before* any data is read (:func:`check_npy_header`
for a file, :func:`read_npy_header` for a stream: the REST publish reads the upload as it arrives)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from contract import quantize as quant
from gkc.manifest import BundleError, Manifest

#: Longest id (characters) a bundle may hold and a BatchGet may ask for; longer → 422 / INVALID_ARGUMENT.
#: It bounds what one id can cost in GKC's memory (item cache keys, request buffers).
MAX_ID_CHARS = 256


def expected_arrays(m: Manifest) -> dict[str, tuple[str | np.dtype[Any], tuple[int, ...]]]:
    """Array name -> (``"U"`` for ids or the numpy dtype of the values, shape) the manifest promises."""
    c, d = m.counts, m.dims
    v = quant.STORAGE[m.dtype]
    out: dict[str, tuple[str | np.dtype[Any], tuple[int, ...]]] = {
        "user_ids": ("U", (c.users,)),
        "user_vectors": (v, (c.users, d.user)),
        "item_ids": ("U", (c.items,)),
        "item_vectors": (v, (c.items, d.item)),
        "uc_user_ids": ("U", (c.user_categories,)),
        "uc_category_ids": ("U", (c.user_categories,)),
        "uc_vectors": (v, (c.user_categories, d.uc)),
    }
    if m.dtype == quant.INT8:
        s = quant.SCALE_DTYPE
        out.update(
            user_scales=(s, (c.users,)), item_scales=(s, (c.items,)), uc_scales=(s, (c.user_categories,))
        )
    return out


def check_npy_header(file: Path, kind: str | np.dtype[Any], shape: tuple[int, ...]) -> None:
    """Refuse an ``.npy`` file whose header is not what the manifest promises *before* loading it: a
    header may claim any shape (e.g. 128 GiB of rows), and ``np.load`` would allocate it."""
    with file.open("rb") as fh:
        dtype = read_npy_header(fh, file.name, kind, shape)
        offset = fh.tell()
    size = math.prod(shape) * dtype.itemsize
    if file.stat().st_size != offset + size:
        raise BundleError(f"{file.name}: {file.stat().st_size - offset} data bytes, the header says {size}")


def read_npy_header(fh: Any, name: str, kind: str | np.dtype[Any], shape: tuple[int, ...]) -> np.dtype[Any]:
    """Read an ``.npy`` header from ``fh`` (a file or a stream) and check it against what the manifest
    promises (``kind``: ``"U"`` for ids, else the values' dtype); the dtype of its data."""
    try:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        got_shape, fortran, dtype = read(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise BundleError(f"{name}: not a valid .npy file ({err})") from err
    if fortran or got_shape != shape:
        raise BundleError(f"{name}: header says shape {got_shape}, the manifest says {shape}")
    if kind != "U" and dtype != kind:
        raise BundleError(f"{name}: dtype {dtype}, the manifest's dtype needs {np.dtype(kind)}")
    if kind == "U" and (dtype.kind != "U" or dtype.itemsize > 4 * MAX_ID_CHARS):
        raise BundleError(f"{name}: dtype {dtype}, expected strings of at most {MAX_ID_CHARS} characters")
    return dtype
