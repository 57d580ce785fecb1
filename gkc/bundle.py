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

Ids are the raw ids of the data contract in their canonical string form (an int64 id ``42`` is
``"42"``), so GKC keys and wire messages never depend on a trainer's vocabulary. Arrays are plain
``.npy`` (no pickle), little-endian float32. The manifest carries a SHA-256 per file; :func:`load`
verifies shapes, dtypes, counts and checksums and raises :class:`BundleError` naming what is wrong.

K̂_u ⊙ K̂_i is not stored: anyone holding K̂_u and K̂_i derives it, so ``d_user == d_item`` is required
when the bundle carries the interaction block (``manifest.interaction = True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from contract.knowledge import Dims
from services.errors import InvalidArgument

FORMAT_VERSION = 1
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
FLOAT_DTYPE = np.dtype("<f4")


class BundleError(InvalidArgument):
    """A bundle that is malformed, truncated, inconsistent or fails its checksums."""


@dataclass(frozen=True)
class Counts:
    users: int
    items: int
    user_categories: int


@dataclass(frozen=True)
class Manifest:
    """Everything GKC lists about a version, and everything a consumer must check before using it."""

    dims: Dims
    counts: Counts
    dtype: str = "float32"
    interaction: bool = True
    strategy: str = "serving"
    #: Where the knowledge came from: data files, day window, extractor checkpoint.
    source: dict[str, Any] = field(default_factory=dict)
    #: Extractor quality on a held-out day, e.g. ``{"click": {"gauc": 0.61}}``.
    metrics: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    format_version: int = FORMAT_VERSION

    def schema(self) -> dict[str, Any]:
        """What a downstream model depends on: block dims and layout, not counts or checksums."""
        return {
            "format_version": self.format_version,
            "dims": asdict(self.dims),
            "interaction": self.interaction,
            "dtype": self.dtype,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            if int(data.get("format_version", -1)) != FORMAT_VERSION:
                raise BundleError(
                    f"manifest format_version {data.get('format_version')!r} is not {FORMAT_VERSION}"
                )
            return cls(
                dims=Dims(**{k: int(v) for k, v in data["dims"].items()}),
                counts=Counts(**{k: int(v) for k, v in data["counts"].items()}),
                dtype=str(data.get("dtype", "float32")),
                interaction=bool(data.get("interaction", True)),
                strategy=str(data.get("strategy", "serving")),
                source=dict(data.get("source", {})),
                metrics=dict(data.get("metrics", {})),
                checksums={str(k): str(v) for k, v in data.get("checksums", {}).items()},
                created=float(data.get("created", 0.0)),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"manifest is malformed: {err!r}") from err


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

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name.removesuffix(".npy")) for name in ARRAY_FILES}


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
) -> Bundle:
    """Assemble and validate an in-memory bundle (checksums are filled in by :func:`save`)."""
    uv = np.ascontiguousarray(user_vectors, dtype=FLOAT_DTYPE)
    iv = np.ascontiguousarray(item_vectors, dtype=FLOAT_DTYPE)
    cv = np.ascontiguousarray(uc_vectors, dtype=FLOAT_DTYPE)
    manifest = Manifest(
        dims=Dims(user=_dim(uv), item=_dim(iv), uc=_dim(cv)),
        counts=Counts(users=len(uv), items=len(iv), user_categories=len(cv)),
        interaction=_dim(uv) == _dim(iv),
        strategy=strategy,
        source=dict(source or {}),
        metrics=dict(metrics or {}),
        created=time.time(),
    )
    bundle = Bundle(
        manifest=manifest,
        user_ids=canonical_ids(user_ids),
        user_vectors=uv,
        item_ids=canonical_ids(item_ids),
        item_vectors=iv,
        uc_user_ids=canonical_ids(uc_user_ids),
        uc_category_ids=canonical_ids(uc_category_ids),
        uc_vectors=cv,
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
        ("user", bundle.user_vectors, m.dims.user, m.counts.users),
        ("item", bundle.item_vectors, m.dims.item, m.counts.items),
        ("uc", bundle.uc_vectors, m.dims.uc, m.counts.user_categories),
    )
    for name, vectors, dim, count in blocks:
        if vectors.dtype != FLOAT_DTYPE:
            raise BundleError(f"{name} vectors have dtype {vectors.dtype}, expected float32")
        if vectors.ndim != 2 or vectors.shape != (count, dim):
            raise BundleError(f"{name} vectors have shape {vectors.shape}, manifest says ({count}, {dim})")
        if not all_finite(vectors):
            raise BundleError(f"{name} vectors contain NaN or inf")
    validate_ids(m, bundle.user_ids, bundle.item_ids, bundle.uc_user_ids, bundle.uc_category_ids)


def validate_ids(
    m: Manifest,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    uc_user_ids: np.ndarray,
    uc_category_ids: np.ndarray,
) -> None:
    if m.dtype != "float32":
        raise BundleError(f"manifest dtype is {m.dtype!r}; only float32 is supported")
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
    """``np.isfinite(vectors).all()`` in row chunks (no full-size temporary for a big block)."""
    return all(bool(np.isfinite(vectors[i : i + rows]).all()) for i in range(0, len(vectors), rows))


def tmp_dir(target: Path) -> Path:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=False)
    return tmp


def seal(tmp: Path, target: Path, manifest: Manifest) -> Path:
    """Checksum every array file in ``tmp``, write the manifest, rename ``tmp`` to ``target``."""
    checksums = {name: _sha256(tmp / name) for name in ARRAY_FILES}
    sealed = Manifest(
        **{**asdict(manifest), "dims": manifest.dims, "counts": manifest.counts, "checksums": checksums}
    )
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
        return Manifest.from_json(json.loads(file.read_text()))
    except FileNotFoundError as err:
        raise BundleError(f"{file}: no manifest") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{file}: not JSON ({err})") from err


def load(path: str | os.PathLike[str], *, verify_checksums: bool = True) -> Bundle:
    """Read and fully validate a bundle directory."""
    root = Path(path)
    manifest = read_manifest(root)
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAY_FILES:
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: missing")
        if verify_checksums:
            expected = manifest.checksums.get(name)
            if expected is None:
                raise BundleError(f"{file}: no checksum in the manifest")
            if _sha256(file) != expected:
                raise BundleError(f"{file}: checksum mismatch (corrupt or truncated)")
        try:
            arrays[name.removesuffix(".npy")] = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise BundleError(f"{file}: unreadable ({err})") from err
    bundle = Bundle(manifest=manifest, **arrays)
    validate(bundle)
    return bundle


def iter_rows(
    ids: np.ndarray, vectors: np.ndarray, batch: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (ids, vectors) for streaming writes with progress."""
    for start in range(0, len(ids), batch):
        yield ids[start : start + batch], vectors[start : start + batch]
