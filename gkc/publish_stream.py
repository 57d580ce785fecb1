"""``POST /v1/versions``, streamed: a bundle's tar stream written into the store as it arrives.

The upload is read member by member (``tarfile`` in stream mode). The manifest and the id and scale
arrays are small next to the vectors and are held in memory; once they are all in, they are validated
as :func:`gkc.bundle.load` would (headers, counts, uniqueness, checksums), the room is checked and a
staging version begun, and each vectors member is then written into it ``batch`` rows at a time as its
bytes arrive (each batch checked: finite floats, int8 codes), its SHA-256 compared with the manifest at
its end. So GKC holds the version's ids, never its vectors, and nothing goes to disk when the members
come in that order (:func:`gkc.bundle.stream_order`, the order ``keep publish`` sends). A member that arrives
before what it needs (vectors before the ids, anything before the manifest) is spooled to a temporary
file and written from there once it can be. Any failure removes the staging version
(:func:`gkc.publish.abort`): a bad upload never becomes visible, and existing versions are untouched.
Unlike a publish from a file there is no retry on a fresh version (the stream cannot be read twice):
a store failure is an ``Unavailable`` for the client to retry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import queue
import shutil
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from contract import quantize as quant
from gkc import bundle as gkc_bundle
from gkc import npy_files
from gkc.bundle import Bundle, BundleError, Manifest
from gkc.delta import check_base
from gkc.publish import (
    PublishResult,
    PublishStore,
    abort,
    check_counts,
    check_room,
    entry_count,
    key_count,
    measured_size,
    sample_digests,
    verify_sample,
)
from gkc.publish_sharded import ids_only
from gkc.store import Staging

log = logging.getLogger(__name__)

#: The files a bundle upload may hold (whether the scales must be there is the manifest's dtype's).
ALLOWED_FILES = {gkc_bundle.MANIFEST, *gkc_bundle.ARRAY_FILES, *gkc_bundle.SCALE_FILES}
#: vectors file -> (block as the store calls it, its ids file, its scales file).
VECTOR_FILES = {
    "user_vectors.npy": ("users", "user_ids.npy", "user_scales.npy"),
    "item_vectors.npy": ("items", "item_ids.npy", "item_scales.npy"),
    "uc_vectors.npy": ("ucs", "uc_user_ids.npy", "uc_scales.npy"),
}


@dataclass(frozen=True)
class StreamSettings:
    batch: int = 2000
    max_ready: int = 5
    samples: int = 64
    replica_timeout_s: float = 10.0
    floor: int = 0


@dataclass
class _Upload:
    """What has arrived: the manifest, the small arrays, the vectors members left for later."""

    manifest: Manifest | None = None
    small: dict[str, np.ndarray] = field(default_factory=dict)
    spooled: dict[str, Path] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    written: dict[str, int] = field(default_factory=lambda: {"users": 0, "ucs": 0, "items": 0})
    #: Per block: the sampled rows' places and, once read, their stored values.
    sample_rows: dict[str, np.ndarray] = field(default_factory=dict)
    sample_values: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _read_exact(src: _Hashing, n: int, name: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise BundleError(f"{name}: truncated ({len(data)} of {n} bytes)")
    return data


class _Hashing:
    """A member's bytes, hashed as they are read."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src, self.digest = src, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.digest.update(data)
        return data


class StreamedPublish:
    """One upload: :meth:`run` reads the tar stream ``src`` and publishes it; ``spool_dir`` takes the
    members that arrive out of order."""

    def __init__(self, store: PublishStore, settings: StreamSettings, spool_dir: Path) -> None:
        self.store, self.settings, self.spool_dir = store, settings, spool_dir
        self.up = _Upload()
        self.staging: Staging | None = None
        self.used_before = 0
        #: Members that came before what they need and went to disk (0 in :func:`stream_order`).
        self.spooled_members = 0

    def run(self, src: IO[bytes]) -> PublishResult:
        try:
            try:
                with tarfile.open(fileobj=src, mode="r|") as tar:
                    for member in tar:
                        self._member(tar, member)
            except (tarfile.TarError, EOFError, UnicodeError) as err:
                raise BundleError(f"the upload is not a readable tar stream: {err}") from err
            m = self.up.manifest
            needed = {f"{n}.npy" for n in npy_files.expected_arrays(m)} if m else set(gkc_bundle.ARRAY_FILES)
            missing = {gkc_bundle.MANIFEST, *needed} - self.up.seen
            if missing:
                raise BundleError(f"the upload lacks {sorted(missing)} (truncated?)")
            self._drain()
            return self._finish()
        except BaseException as err:
            if self.staging is not None:
                abort(self.store, self.staging, f"{type(err).__name__}: {err}")
            raise

    # --- members ----------------------------------------------------------------------------------
    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = Path(member.name).name
        if member.isdir():
            return
        if not member.isfile() or name not in ALLOWED_FILES or name in self.up.seen:
            raise BundleError(f"unexpected entry in the bundle upload: {member.name!r}")
        self.up.seen.add(name)
        src = tar.extractfile(member)
        assert src is not None
        m = self.up.manifest
        if name == gkc_bundle.MANIFEST:
            self.up.manifest = Manifest.parse(src.read(gkc_bundle.MAX_MANIFEST_BYTES + 1))
            self._drain()
        elif m is None or (name in VECTOR_FILES and not self._ready()):
            self._spool(name, src)
        elif name in VECTOR_FILES:
            self._vectors(name, src)
        else:
            self._small(name, src)
            self._drain()

    def _spool(self, name: str, src: IO[bytes]) -> None:
        path = self.spool_dir / name
        self.spooled_members += 1
        with path.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        self.up.spooled[name] = path

    def _expected(self, name: str) -> tuple[str | np.dtype[Any], tuple[int, ...]]:
        assert self.up.manifest is not None
        expected = npy_files.expected_arrays(self.up.manifest)
        stem = name.removesuffix(".npy")
        if stem not in expected:
            raise BundleError(f"{name}: not part of a {self.up.manifest.dtype} bundle")
        return expected[stem]

    def _checked(self, name: str, src: _Hashing) -> None:
        assert self.up.manifest is not None
        want = self.up.manifest.checksums.get(name)
        if want is None:
            raise BundleError(f"{name}: no checksum in the manifest")
        if src.read(1):
            raise BundleError(f"{name}: more data than its header says")
        if src.digest.hexdigest() != want:
            raise BundleError(f"{name}: checksum mismatch (corrupt or truncated)")

    def _small(self, name: str, raw: IO[bytes]) -> None:
        kind, shape = self._expected(name)
        src = _Hashing(raw)
        dtype = npy_files.read_npy_header(src, name, kind, shape)
        data = _read_exact(src, math.prod(shape) * dtype.itemsize, name)
        self._checked(name, src)
        self.up.small[name] = np.frombuffer(data, dtype=dtype).reshape(shape)

    def _ready(self) -> bool:
        """Every id and scale array is in: the version can be begun and vectors written."""
        m = self.up.manifest
        if m is None:
            return False
        needed = {f"{n}.npy" for n in npy_files.expected_arrays(m) if n not in _VECTORS}
        return needed <= set(self.up.small)

    def _drain(self) -> None:
        """Read the spooled members that can be read now (small ones first), begin when ready."""
        for name in sorted(self.up.spooled, key=lambda n: n in VECTOR_FILES):
            if name in VECTOR_FILES and not self._ready():
                continue
            if name in VECTOR_FILES and self.staging is None:
                self._begin()
            path = self.up.spooled.pop(name)
            with path.open("rb") as fh:
                (self._vectors if name in VECTOR_FILES else self._small)(name, fh)
            path.unlink()
        if self._ready() and self.staging is None:
            self._begin()

    # --- the version ------------------------------------------------------------------------------
    def _ids(self) -> Bundle:
        s = self.up.small
        return ids_only(s["user_ids.npy"], s["item_ids.npy"], s["uc_user_ids.npy"], s["uc_category_ids.npy"])

    def _begin(self) -> None:
        m = self.up.manifest
        assert m is not None
        ids = self._ids()
        gkc_bundle.validate_ids(m, ids.user_ids, ids.item_ids, ids.uc_user_ids, ids.uc_category_ids)
        for block, (_, _, scales) in zip(("users", "items", "ucs"), VECTOR_FILES.values(), strict=True):
            if scales in self.up.small:
                gkc_bundle.check_scales(block, self.up.small[scales])
        id_chars = max(1, *(a.dtype.itemsize // 4 for a in (ids.user_ids, ids.item_ids, ids.uc_category_ids)))
        check_room(self.store, m, self.settings.max_ready, id_chars)
        check_base(m, self.store.records()[0])
        self.used_before = self.store.memory().used_bytes
        self.staging = self.store.begin(m.to_json(), m.content_checksum(), m.dims, self.settings.floor)
        rng = np.random.default_rng(self.staging.number)
        for block, id_file, _ in VECTOR_FILES.values():
            n = len(self.up.small[id_file])
            self.up.sample_rows[block] = np.sort(rng.choice(n, min(self.settings.samples, n), replace=False))
            self.up.sample_values[block] = []
        log.info("publishing %s from a stream (%d entries)", self.staging.identity, entry_count(m.counts))

    def _vectors(self, name: str, raw: IO[bytes]) -> None:
        assert self.staging is not None and self.up.manifest is not None
        block, id_file, scale_file = VECTOR_FILES[name]
        kind, shape = self._expected(name)
        src = _Hashing(raw)
        dtype = npy_files.read_npy_header(src, name, kind, shape)
        ids = self.up.small[id_file]
        scales = self.up.small.get(scale_file)
        row_bytes = shape[1] * dtype.itemsize
        ns, batch = self.staging.namespace, self.settings.batch
        picks = self.up.sample_rows[block]
        for start in range(0, shape[0], batch):
            stop = min(start + batch, shape[0])
            data = _read_exact(src, (stop - start) * row_bytes, name)
            values = np.frombuffer(data, dtype=dtype).reshape(stop - start, shape[1])
            _check_values(block, values, self.up.manifest.dtype)
            rows = quant.encode_rows(values, None if scales is None else scales[start:stop])
            self.up.sample_values[block].append(values[picks[(picks >= start) & (picks < stop)] - start])
            if block == "users":
                new = self.store.write_user_vectors(ns, ids[start:stop], rows)
            elif block == "ucs":
                cats = self.up.small["uc_category_ids.npy"][start:stop]
                new = self.store.write_uc_vectors(ns, ids[start:stop], cats, rows)
            else:
                new = self.store.write_items(ns, ids[start:stop], rows)
            self.up.written[block] += new
            self.store.heartbeat(self.staging.number)
        self._checked(name, src)

    def _finish(self) -> PublishResult:
        m, staging = self.up.manifest, self.staging
        assert m is not None and staging is not None
        check_counts(staging.number, self.up.written, m.counts)
        sample = self._sample()
        verify_sample(self.store, staging.namespace, staging.number, sample, self.settings.samples)
        digests = sample_digests(self.store, staging.namespace, sample)
        self.store.wait_replicated(self.settings.replica_timeout_s)
        size = measured_size(self.store, self.used_before)
        keys = key_count(self._ids())
        retired = self.store.finish(
            staging.number, self.settings.max_ready, keys, digests, entry_count(m.counts), size
        )
        log.info(
            "%s ready (streamed, %d members spooled); retired %s",
            staging.identity,
            self.spooled_members,
            retired,
        )
        return PublishResult(staging.number, retired, entry_count(m.counts), staging.identity)

    def _sample(self) -> Bundle:
        """The sampled entries as a bundle (their ids, stored values and scales)."""
        s, up = self.up.small, self.up
        assert up.manifest is not None
        picks = up.sample_rows
        parts: dict[str, Any] = {}
        for vectors, (block, _, scale_file) in VECTOR_FILES.items():
            dim = self._expected(vectors)[1][1]
            kept = up.sample_values[block]
            parts[vectors.removesuffix(".npy")] = np.concatenate(kept) if kept else np.zeros((0, dim))
            if scale_file in s:
                parts[scale_file.removesuffix(".npy")] = s[scale_file][picks[block]]
        return Bundle(
            manifest=up.manifest,
            user_ids=s["user_ids.npy"][picks["users"]],
            item_ids=s["item_ids.npy"][picks["items"]],
            uc_user_ids=s["uc_user_ids.npy"][picks["ucs"]],
            uc_category_ids=s["uc_category_ids.npy"][picks["ucs"]],
            **parts,
        )


_VECTORS = {name.removesuffix(".npy") for name in VECTOR_FILES}


def _check_values(block: str, values: np.ndarray, dtype: str) -> None:
    if dtype != quant.INT8:
        if not np.isfinite(values).all():
            raise BundleError(f"{block} vectors contain NaN or inf")
    elif (values == -128).any():
        raise BundleError(f"{block} int8 codes outside ±{quant.INT8_MAX}")


class PipeClosed(Exception):
    """The writer of a :class:`BytesPipe` gave up (the upload was cut, or too large)."""


class BytesPipe(io.RawIOBase):
    """Chunks handed from the thread receiving an upload to the thread publishing it, at most
    ``depth`` of them in between (the receiver waits for the publisher: memory stays bounded)."""

    def __init__(self, depth: int = 16) -> None:
        super().__init__()
        self._chunks: queue.Queue[bytes | Exception | None] = queue.Queue(depth)
        self._buffer = memoryview(b"")
        self._eof = False
        #: Set by the reader when it stops (done or failed): the writer then stops waiting.
        self.reader_gone = threading.Event()

    def offer(self, chunk: bytes | Exception | None) -> bool | None:
        """Hand over a chunk (``None``: the end; an exception: the reader raises it) if there is room:
        True if taken, False if full (try again), None once the reader has stopped."""
        if self.reader_gone.is_set():
            return None
        try:
            self._chunks.put_nowait(chunk)
            return True
        except queue.Full:
            return False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            if self._eof:
                return 0
            item = self._chunks.get()
            if item is None:
                self._eof = True
                return 0
            if isinstance(item, Exception):
                raise item
            self._buffer = memoryview(item)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n
