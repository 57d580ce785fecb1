"""Publishing a bundle as a new version, and cleaning up versions that are retired or abandoned.

A publish writes everything under a fresh version number in state ``staging`` (invisible to readers),
checks that every write created a new entry (counts match the manifest) and reads a random sample back
bit-exact, then flips the version to ``ready`` in one atomic registry update. A publisher that dies
half-way leaves a staging version that no reader can see; the janitor abandons it once its heartbeat is
older than the lease and deletes its keys.

A *sharded* publish (``keep export --gkc-redis`` under torchrun) is the same protocol split over ranks:
one rank allocates the staging version with the full manifest (``store.begin``), every rank writes and
checks its own slice (:func:`write_shard`: the same write loop, count check and bit-exact sample read
back as :func:`publish`), and one rank finalises (:func:`finalise_shards`): every rank reported success,
the slices' digests are the manifest's, the summed counts are the manifest's, a sample of every block's
ids is present; then the one atomic ``store.finish``. Any failure retires the version instead; a rank
that dies leaves it staging (invisible) until the janitor abandons it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from gkc.bundle import Bundle, Counts, Manifest, iter_rows
from gkc.store import RETIRING, KnowledgeStore
from services.errors import KeepError

log = logging.getLogger(__name__)


class PublishVerificationError(KeepError):
    """What was written does not read back as the bundle (500: the store misbehaved)."""


@dataclass(frozen=True)
class PublishResult:
    version: int
    retired: list[int]
    entries: int


def write_data(
    store: KnowledgeStore,
    version: int,
    bundle: Bundle,
    *,
    batch: int = 2000,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write every row of ``bundle`` under ``version`` (a heartbeat per batch); new entries per block."""
    m = bundle.manifest
    total = m.counts.users + m.counts.user_categories + m.counts.items
    bar = tqdm(total=total, desc=f"publish v{version}", unit="vec", disable=not progress, leave=False)
    written = {"users": 0, "ucs": 0, "items": 0}

    def step(kind: str, n: int, new: int) -> None:
        written[kind] += new
        bar.update(n)
        store.heartbeat(version)
        if on_batch is not None:
            on_batch(n)

    try:
        for ids, vecs in iter_rows(bundle.user_ids, bundle.user_vectors, batch):
            step("users", len(ids), store.write_users(version, ids, vecs, None, None))
        for start in range(0, len(bundle.uc_user_ids), batch):
            sl = slice(start, start + batch)
            ids = bundle.uc_user_ids[sl]
            new = store.write_users(version, ids, None, bundle.uc_category_ids[sl], bundle.uc_vectors[sl])
            step("ucs", len(ids), new)
        for ids, vecs in iter_rows(bundle.item_ids, bundle.item_vectors, batch):
            step("items", len(ids), store.write_items(version, ids, vecs))
    finally:
        bar.close()
    return written


def expected_entries(counts: Counts) -> dict[str, int]:
    return {"users": counts.users, "ucs": counts.user_categories, "items": counts.items}


def check_counts(version: int, written: dict[str, int], counts: Counts) -> None:
    """Every entry the manifest promises was written, no more (else the version must not go ready)."""
    expected = expected_entries(counts)
    if written != expected:
        raise PublishVerificationError(f"version {version}: wrote {written}, expected {expected}")


def publish(
    store: KnowledgeStore,
    bundle: Bundle,
    *,
    batch: int = 2000,
    max_ready: int = 5,
    samples: int = 64,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> PublishResult:
    """Write ``bundle`` as a new version and make it ready (active if it is the first)."""
    m = bundle.manifest
    total = m.counts.users + m.counts.user_categories + m.counts.items
    version = store.begin(m.to_json())
    log.info("publishing version %d (%d entries)", version, total)
    try:
        written = write_data(store, version, bundle, batch=batch, progress=progress, on_batch=on_batch)
        check_counts(version, written, m.counts)
        verify_sample(store, version, bundle, samples)
        retired = store.finish(version, max_ready)
    except BaseException:
        give_up(store, version)
        raise
    log.info("version %d ready; retired %s", version, retired)
    return PublishResult(version=version, retired=retired, entries=total)


@dataclass(frozen=True)
class ShardReport:
    """What one rank of a sharded publish did: entries written per block, digests, or its error."""

    rank: int
    written: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def array_digests(bundle: Bundle) -> dict[str, str]:
    """SHA-256 of each array's raw bytes (not of its ``.npy`` file), keyed by array name.

    A sharded publish has no files; these name exactly the rows and vectors each rank wrote."""
    out = {}
    for name, arr in bundle.arrays().items():
        data = np.ascontiguousarray(arr)
        digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
        for start in range(0, len(data), 65_536):  # bounded copies for big blocks
            digest.update(data[start : start + 65_536].tobytes())
        out[name.removesuffix(".npy")] = digest.hexdigest()
    return out


def shard_checksums(digests: Sequence[dict[str, str]]) -> dict[str, str]:
    """The manifest's ``checksums`` of a sharded version: ``shard<r>/<array>`` -> SHA-256 of its bytes."""
    return {f"shard{r}/{name}": d for r, ds in enumerate(digests) for name, d in sorted(ds.items())}


def write_shard(
    store: KnowledgeStore,
    version: int,
    shard: Bundle,
    *,
    rank: int,
    batch: int = 2000,
    samples: int = 64,
    progress: bool = False,
) -> ShardReport:
    """One rank's slice of a sharded publish: write, check counts, read a sample back bit-exact.

    Never raises: the report carries the error, so the finalising rank hears from every live rank."""
    try:
        written = write_data(store, version, shard, batch=batch, progress=progress)
        check_counts(version, written, shard.manifest.counts)
        verify_sample(store, version, shard, samples)
        return ShardReport(rank=rank, written=written, digests=array_digests(shard))
    except Exception as err:
        log.warning("rank %d: writing its shard of version %d failed: %s", rank, version, err)
        return ShardReport(rank=rank, error=f"{type(err).__name__}: {err}")


def finalise_shards(
    store: KnowledgeStore,
    version: int,
    manifest: Manifest,
    reports: Sequence[ShardReport],
    ids: Bundle,
    *,
    max_ready: int = 5,
    samples: int = 64,
) -> PublishResult:
    """Verify a sharded version and make it ready in one atomic update; retire it on any failure.

    ``ids``: a bundle whose id arrays are the whole version's (vectors are not looked at)."""
    try:
        failed = [f"rank {r.rank}: {r.error}" for r in reports if r.error is not None]
        if failed:
            raise PublishVerificationError(f"version {version}: " + "; ".join(failed))
        got = shard_checksums([r.digests for r in reports])
        if got != manifest.checksums:
            raise PublishVerificationError(f"version {version}: the shards written are not the manifest's")
        written = {k: sum(r.written[k] for r in reports) for k in ("users", "ucs", "items")}
        check_counts(version, written, manifest.counts)
        verify_present(store, version, ids, samples)
        retired = store.finish(version, max_ready)
    except BaseException:
        give_up(store, version)
        raise
    log.info("sharded version %d ready (%d shards); retired %s", version, len(reports), retired)
    return PublishResult(version=version, retired=retired, entries=sum(written.values()))


def verify_present(store: KnowledgeStore, version: int, ids: Bundle, samples: int) -> None:
    """A random sample of the version's users, (user, category) pairs and items all exist."""
    rng = np.random.default_rng(version)
    for row in rng.choice(len(ids.uc_user_ids), min(samples, len(ids.uc_user_ids)), replace=False):
        raw = store.read(version, str(ids.uc_user_ids[row]), [str(ids.uc_category_ids[row])], [])
        if raw.ucs[0] is None:
            raise PublishVerificationError(f"version {version}: K̂_uc of {ids.uc_user_ids[row]!r} is missing")
    for row in rng.choice(len(ids.user_ids), min(samples, len(ids.user_ids)), replace=False):
        if store.read(version, str(ids.user_ids[row]), [], []).user is None:
            raise PublishVerificationError(f"version {version}: K̂_u of {ids.user_ids[row]!r} is missing")
    items = rng.choice(len(ids.item_ids), min(samples, len(ids.item_ids)), replace=False)
    if len(items) and any(
        v is None for v in store.read(version, "\x00", [], ids.item_ids[items].tolist()).items
    ):
        raise PublishVerificationError(f"version {version}: some K̂_i are missing")


def give_up(store: KnowledgeStore, version: int) -> None:
    """Best effort: a failed version → retiring (else the janitor abandons it after the lease)."""
    try:
        store.retire(version)
    except Exception:  # the janitor abandons it after the lease anyway
        log.warning("could not mark failed version %d for cleanup", version, exc_info=True)


def verify_sample(store: KnowledgeStore, version: int, bundle: Bundle, samples: int) -> None:
    """Read ``samples`` random users, (user, category) pairs and items back and compare bytes."""
    rng = np.random.default_rng(version)
    checks = 0
    for row in rng.choice(len(bundle.uc_user_ids), min(samples, len(bundle.uc_user_ids)), replace=False):
        uid = str(bundle.uc_user_ids[row])
        raw = store.read(version, uid, [str(bundle.uc_category_ids[row])], [])
        if raw.ucs[0] != bundle.uc_vectors[row].tobytes():
            raise PublishVerificationError(f"version {version}: K̂_uc of {uid!r} does not read back")
        checks += 1
    users = rng.choice(len(bundle.user_ids), min(samples, len(bundle.user_ids)), replace=False)
    items = rng.choice(len(bundle.item_ids), min(samples, len(bundle.item_ids)), replace=False)
    for urow in users:
        raw = store.read(version, str(bundle.user_ids[urow]), [], [])
        if raw.user != bundle.user_vectors[urow].tobytes():
            raise PublishVerificationError(f"version {version}: K̂_u of {bundle.user_ids[urow]!r} differs")
    if len(items):
        raw = store.read(version, "\x00", [], [str(i) for i in bundle.item_ids[items]])
        for got, irow in zip(raw.items, items, strict=True):
            if got != bundle.item_vectors[irow].tobytes():
                raise PublishVerificationError(f"version {version}: K̂_i of {bundle.item_ids[irow]!r} differs")
    log.debug("version %d: %d samples read back", version, checks + len(users) + len(items))


class Janitor:
    """Background thread: abandons stale staging versions and deletes retiring ones in batches.

    Deletion is SCAN + UNLINK in batches of ``batch`` keys (UNLINK frees memory off the main Redis
    thread), so it never blocks readers. :meth:`kick` runs a pass now (after a publish or delete).
    """

    def __init__(
        self, store: KnowledgeStore, *, lease_s: float, interval_s: float = 5.0, batch: int = 1000
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gkc-janitor", daemon=True)

    def start(self) -> Janitor:
        self._thread.start()
        return self

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def run_once(self) -> list[int]:
        """One pass; returns the versions whose data was deleted."""
        self.store.abandon_stale(self.lease_s)
        records, _ = self.store.versions()
        done = []
        for record in records:
            if record.state == RETIRING:
                removed = self.store.delete_version_data(record.version, self.batch)
                self.store.forget(record.version)
                log.info("deleted version %d (%d keys)", record.version, removed)
                done.append(record.version)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as err:
                log.warning("janitor pass failed: %s", err)
            self._wake.wait(self.interval_s)
            self._wake.clear()
