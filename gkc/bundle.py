"""The knowledge bundle: what Stage 1 exports and GKC publishes. One format, one module, both sides.

A bundle is a directory::

    manifest.json            see :class:`Manifest`
    user_ids.npy             <U  [N_u]          raw user ids as strings
    user_vectors.npy         <f4 [N_u, d_user]  K̂_u
    item_ids.npy             <U  [N_i]
    item_vectors.npy         <f4 [N_i, d_item]  K̂_i
    uc_user_ids.npy          <U  [N_uc]         (user, category) pairs that occur
    uc_category_ids.npy      <U  [N_uc]
    uc_vectors.npy           <f4 [N_uc, d_uc]   K̂_uc
    user_scales.npy, item_scales.npy, uc_scales.npy   <f4 [N]   int8 bundles only: per-row scales

The vectors are stored at the manifest's ``dtype`` (:mod:`contract.quantize`): ``float32`` (``<f4``),
``float16`` (``<f2``) or ``int8`` (``i1`` codes plus a float32 scale per row). Readers turn them into
float32 through :func:`contract.quantize.dequantize` only (:meth:`Bundle.rows` gives the stored rows, the
bytes GKC keeps in Redis).

Ids are the raw ids of the data contract in their canonical string form (an int64 id ``42`` is
``"42"``), so GKC keys and wire messages never depend on a trainer's vocabulary. Arrays are plain
``.npy`` (no pickle), little-endian. The manifest carries a SHA-256 per file; :func:`load`
verifies shapes, dtypes, counts and checksums and raises :class:`BundleError` naming what is wrong.

K̂_u ⊙ K̂_i is not stored: anyone holding K̂_u and K̂_i derives it, so ``d_user == d_item`` is required
when the bundle carries the interaction block (``manifest.interaction = True``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract import quantize as quant
from contract.ids import canonical_ids
from contract.knowledge import Dims
from gkc.manifest import FORMAT_VERSION as FORMAT_VERSION
from gkc.manifest import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from gkc.manifest import BundleError as BundleError
from gkc.manifest import Counts as Counts
from gkc.manifest import Manifest as Manifest
from gkc.npy_files import MAX_ID_CHARS as MAX_ID_CHARS
from gkc.npy_files import check_npy_header, expected_arrays
from services.errors import InvalidArgument

MANIFEST = "manifest.json"
ARRAY_FILES = (
    "user_ids.npy",
    "user_vectors.npy",
    "item_ids.npy",
    "item_vectors.npy",
    "uc_user_ids.npy",
    "uc_category_ids.npy",
    "uc_vectors.npy",
)
#: The int8 layout's per-row scales (not in a float bundle).
SCALE_FILES = ("user_scales.npy", "item_scales.npy", "uc_scales.npy")
FLOAT_DTYPE = np.dtype("<f4")
#: Block name (as ``Bundle.rows`` and the publisher call them) -> (vectors field, scales field).
BLOCK_FIELDS = {
    "users": ("user_vectors", "user_scales"),
    "items": ("item_vectors", "item_scales"),
    "ucs": ("uc_vectors", "uc_scales"),
}


def stream_order(names: list[str]) -> list[str]:
    """The order of a bundle's files in an upload that GKC writes as it arrives, spooling nothing
    (:mod:`gkc.publish_stream`): the manifest, the ids and scales, then the vectors."""
    vectors = {BLOCK_FIELDS[b][0] + ".npy" for b in BLOCK_FIELDS}
    return sorted(names, key=lambda n: (0 if n == MANIFEST else 2 if n in vectors else 1, n))


def array_files(dtype: str) -> tuple[str, ...]:
    """The ``.npy`` files a bundle of this stored dtype has."""
    return ARRAY_FILES + SCALE_FILES if dtype == quant.INT8 else ARRAY_FILES


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    user_ids: np.ndarray
    user_vectors: np.ndarray
    item_ids: np.ndarray
    item_vectors: np.ndarray
    uc_user_ids: np.ndarray
    uc_category_ids: np.ndarray
    uc_vectors: np.ndarray
    #: int8 bundles: float32 scale per row of each block (None otherwise).
    user_scales: np.ndarray | None = None
    item_scales: np.ndarray | None = None
    uc_scales: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name.removesuffix(".npy")) for name in array_files(self.manifest.dtype)}

    def rows(self, block: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored rows ``[start, stop)`` of ``block`` (users | items | ucs), ``uint8 [n, row_bytes]``:
        the bytes GKC stores per entry (a view for float dtypes, a copy for int8)."""
        vectors, scales = BLOCK_FIELDS[block]
        sc = getattr(self, scales)
        return quant.encode_rows(getattr(self, vectors)[start:stop], None if sc is None else sc[start:stop])

    def release(self, block: str, start: int, stop: int) -> None:
        """Done with rows ``[start, stop)`` of ``block``: let a memory-mapped bundle's pages go."""
        for name in BLOCK_FIELDS[block]:
            arr = getattr(self, name)
            if arr is not None:
                drop_pages(arr, start, stop)

    def dequantized(self, block: str) -> np.ndarray:
        """A whole block as float32 (through :func:`contract.quantize.dequantize`)."""
        dims = self.manifest.dims
        dim = {"users": dims.user, "items": dims.item, "ucs": dims.uc}[block]
        return quant.dequantize(self.rows(block), self.manifest.dtype, dim)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(
    *,
    user_ids: Any,
    user_vectors: np.ndarray,
    item_ids: Any,
    item_vectors: np.ndarray,
    uc_user_ids: Any,
    uc_category_ids: Any,
    uc_vectors: np.ndarray,
    strategy: str = "serving",
    source: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    dtype: str = quant.FLOAT32,
) -> Bundle:
    """Assemble and validate an in-memory bundle stored at ``dtype`` (checksums are filled in by
    :func:`save`); the vectors given are float32."""
    uv = np.ascontiguousarray(user_vectors, dtype=FLOAT_DTYPE)
    iv = np.ascontiguousarray(item_vectors, dtype=FLOAT_DTYPE)
    cv = np.ascontiguousarray(uc_vectors, dtype=FLOAT_DTYPE)
    dims = Dims(user=_dim(uv), item=_dim(iv), uc=_dim(cv))
    try:
        (uq, us), (iq, is_), (cq, cs) = (quant.quantize(v, dtype) for v in (uv, iv, cv))
    except InvalidArgument as err:
        raise BundleError(str(err)) from err
    manifest = Manifest(
        dims=dims,
        counts=Counts(users=len(uv), items=len(iv), user_categories=len(cv)),
        dtype=dtype,
        interaction=_dim(uv) == _dim(iv),
        strategy=strategy,
        source=dict(source or {}),
        metrics=dict(metrics or {}),
        created=time.time(),
    )
    bundle = Bundle(
        manifest=manifest,
        user_ids=canonical_ids(user_ids),
        user_vectors=uq,
        item_ids=canonical_ids(item_ids),
        item_vectors=iq,
        uc_user_ids=canonical_ids(uc_user_ids),
        uc_category_ids=canonical_ids(uc_category_ids),
        uc_vectors=cq,
        user_scales=us,
        item_scales=is_,
        uc_scales=cs,
    )
    validate(bundle)
    return bundle


def _dim(arr: np.ndarray) -> int:
    if arr.ndim != 2:
        raise BundleError(f"vectors must be 2-D, got shape {arr.shape}")
    return int(arr.shape[1])


def validate(bundle: Bundle) -> None:
    """Shapes, dtypes, counts and uniqueness agree with the manifest; raises :class:`BundleError`."""
    m = bundle.manifest
    blocks = (
        ("user", bundle.user_vectors, bundle.user_scales, m.dims.user, m.counts.users),
        ("item", bundle.item_vectors, bundle.item_scales, m.dims.item, m.counts.items),
        ("uc", bundle.uc_vectors, bundle.uc_scales, m.dims.uc, m.counts.user_categories),
    )
    stored = quant.STORAGE[m.dtype]
    for name, vectors, scales, dim, count in blocks:
        if vectors.dtype != stored:
            raise BundleError(f"{name} vectors have dtype {vectors.dtype}, the manifest says {m.dtype}")
        if vectors.ndim != 2 or vectors.shape != (count, dim):
            raise BundleError(f"{name} vectors have shape {vectors.shape}, manifest says ({count}, {dim})")
        if m.dtype != quant.INT8:
            if scales is not None:
                raise BundleError(f"{name} scales in a {m.dtype} bundle")
            if not all_finite(vectors):
                raise BundleError(f"{name} vectors contain NaN or inf")
            continue
        if scales is None or scales.dtype != quant.SCALE_DTYPE or scales.shape != (count,):
            got = None if scales is None else (scales.dtype, scales.shape)
            raise BundleError(f"{name} scales are {got}, expected float32 ({count},)")
        check_scales(name, scales)
        if not codes_in_range(vectors):
            raise BundleError(f"{name} int8 codes outside ±{quant.INT8_MAX}")
    validate_ids(m, bundle.user_ids, bundle.item_ids, bundle.uc_user_ids, bundle.uc_category_ids)


def check_scales(name: str, scales: np.ndarray) -> None:
    """int8 scales are finite and not negative (a garbage scale would read back as garbage)."""
    if not all_finite(scales.reshape(-1, 1)) or (len(scales) and float(scales.min()) < 0):
        raise BundleError(f"{name} scales contain NaN, inf or negative values")


def validate_ids(
    m: Manifest,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    uc_user_ids: np.ndarray,
    uc_category_ids: np.ndarray,
) -> None:
    if m.dtype not in quant.DTYPES:
        raise BundleError(f"manifest dtype is {m.dtype!r}, not one of {', '.join(quant.DTYPES)}")
    for name, ids, count in (
        ("user", user_ids, m.counts.users),
        ("item", item_ids, m.counts.items),
        ("uc", uc_user_ids, m.counts.user_categories),
    ):
        if ids.shape != (count,) or ids.dtype.kind != "U":
            raise BundleError(
                f"{name} ids have shape {ids.shape} / dtype {ids.dtype}, expected ({count},) str"
            )
    if uc_category_ids.shape != uc_user_ids.shape or uc_category_ids.dtype.kind != "U":
        raise BundleError("uc_category_ids must match uc_user_ids in length and be strings")
    for name, ids in (("user", user_ids), ("item", item_ids), ("category", uc_category_ids)):
        if (
            ids.dtype.itemsize > 4 * MAX_ID_CHARS
            and len(ids)
            and int(np.char.str_len(ids).max()) > MAX_ID_CHARS
        ):
            raise BundleError(f"{name} ids longer than {MAX_ID_CHARS} characters")
    if len(np.unique(user_ids)) != len(user_ids):
        raise BundleError("user ids are not unique")
    if len(np.unique(item_ids)) != len(item_ids):
        raise BundleError("item ids are not unique")
    pairs = np.char.add(np.char.add(uc_user_ids, "\x1f"), uc_category_ids)
    if len(np.unique(pairs)) != len(pairs):
        raise BundleError("(user, category) pairs are not unique")
    if m.interaction and m.dims.user != m.dims.item:
        raise BundleError("interaction block needs d_user == d_item")


def all_finite(vectors: np.ndarray, rows: int = 65_536) -> bool:
    """``np.isfinite(vectors).all()`` in row chunks (no full-size temporary for a big block; the file
    pages of a memory-mapped block are let go behind the scan)."""
    for i in range(0, len(vectors), rows):
        if not np.isfinite(vectors[i : i + rows]).all():
            return False
        drop_pages(vectors, i, i + rows)
    return True


def codes_in_range(codes: np.ndarray, rows: int = 65_536) -> bool:
    """No int8 code is -128 (stored codes are within ±127), scanned like :func:`all_finite`."""
    for i in range(0, len(codes), rows):
        if bool((codes[i : i + rows] == -128).any()):
            return False
        drop_pages(codes, i, i + rows)
    return True


def drop_pages(arr: np.ndarray, start: int, stop: int) -> None:
    """Let the kernel drop the file pages of rows ``[start, stop)`` of a memory-mapped array (read again
    from the file if touched later), so that reading a bundle through once, as a publish does, does not
    grow the process's resident memory with the bundle. A no-op for arrays in memory."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or arr.ndim == 0 or not arr.flags.c_contiguous:
        return
    try:
        base = np.frombuffer(mm, np.uint8).__array_interface__["data"][0]
    except (TypeError, ValueError):
        return
    begin = arr.__array_interface__["data"][0] - base
    row = arr.strides[0]
    page = mmap.PAGESIZE
    lo = -(-(begin + max(0, start) * row) // page) * page
    hi = (begin + min(stop, len(arr)) * row) // page * page
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def tmp_dir(target: Path) -> Path:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=False)
    return tmp


def seal(tmp: Path, target: Path, manifest: Manifest) -> Path:
    """Checksum every array file in ``tmp``, write the manifest, rename ``tmp`` to ``target``."""
    checksums = {name: _sha256(tmp / name) for name in array_files(manifest.dtype)}
    sealed = replace(manifest, checksums=checksums)
    (tmp / MANIFEST).write_text(json.dumps(sealed.to_json(), indent=2, sort_keys=True))
    if target.exists():
        raise BundleError(f"{target} already exists; refusing to overwrite a bundle")
    tmp.rename(target)
    return target


def save(bundle: Bundle, out: str | os.PathLike[str]) -> Path:
    """Write atomically: into ``out.tmp-*`` first, then rename, so a crash leaves no half bundle."""
    validate(bundle)
    target = Path(out)
    tmp = tmp_dir(target)
    for name, arr in bundle.arrays().items():
        np.save(tmp / name, arr, allow_pickle=False)
    return seal(tmp, target, bundle.manifest)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    file = Path(path) / MANIFEST
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as err:
        raise BundleError(f"{file}: no manifest") from err
    except IsADirectoryError as err:
        raise BundleError(f"{file}: not a file") from err
    return Manifest.parse(raw)


def load(path: str | os.PathLike[str], *, verify_checksums: bool = True, mmap: bool = False) -> Bundle:
    """Read and fully validate a bundle directory.

    Every ``.npy`` header is checked against the manifest before its data is read; ``mmap=True`` maps
    the arrays instead of reading them (the files must then stay until the bundle is dropped)."""
    root = Path(path)
    manifest = read_manifest(root)
    arrays: dict[str, np.ndarray] = {}
    for name, (kind, shape) in expected_arrays(manifest).items():
        file = root / f"{name}.npy"
        if not file.is_file():
            raise BundleError(f"{file}: missing")
        if verify_checksums:
            expected = manifest.checksums.get(file.name)
            if expected is None:
                raise BundleError(f"{file}: no checksum in the manifest")
            if _sha256(file) != expected:
                raise BundleError(f"{file}: checksum mismatch (corrupt or truncated)")
        check_npy_header(file, kind, shape)
        try:
            arrays[name] = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as err:
            raise BundleError(f"{file}: unreadable ({err})") from err
    bundle = Bundle(manifest=manifest, **arrays)
    validate(bundle)
    return bundle
