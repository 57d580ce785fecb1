"""Publishing a bundle as a new version: write, verify, promote; on any failure leave nothing behind.

A publish first checks that the version can become ready (a ready slot that is neither active nor
pinned can be freed) and that its estimated size fits in the store's free memory (else 409 / 507 before
a byte is written). It then writes everything under a fresh namespace in state ``staging`` (invisible to
readers), heartbeating after every batch (a DELETE of the staging version stops it at the next batch),
checks that every write created a new entry (counts match the manifest), reads a random sample back
bit-exact, waits until replicas have the writes, and flips the version to ``ready`` in one atomic
registry update. A failure deletes the staging namespace at once (nothing was ever served from it) and
drops its registry entry; a publisher that dies half-way leaves a staging version no reader can see,
which the janitor abandons once its heartbeat is older than the lease. A failure of the store itself
(Redis unavailable, a failover that lost acknowledged writes) is retried once on a fresh version, then
answered :class:`services.errors.Unavailable` (retryable), never a 500.

A *sharded* publish (``keep export --gkc-redis`` under torchrun) is the same protocol split over ranks
(:mod:`gkc.publish_sharded`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from contract import quantize as quant
from gkc.bundle import Bundle, Counts, Manifest
from gkc.delta import check_base
from gkc.integrity import entry_digest as _digest
from gkc.store import READY, KnowledgeReader, KnowledgeWriter, Staging, VersionIdentity, VersionRegistry
from services.errors import Conflict, InsufficientStorage, KeepError, Unavailable

log = logging.getLogger(__name__)

#: Bytes Redis spends per key and per hash field beyond the key / field / value bytes (dict entry,
#: object header, allocator rounding); calibrated against ``used_memory`` (docs/gkc.md, "Memory").
KEY_OVERHEAD = 96
FIELD_OVERHEAD = 64
#: A publish must leave this share of the store's memory free.
MEMORY_MARGIN = 0.10


class PublishVerificationError(KeepError):
    """What was written does not read back as the bundle."""


class PublishStore(KnowledgeReader, VersionRegistry, KnowledgeWriter, Protocol):
    """A publish reads (verification), writes and changes the registry."""


@dataclass(frozen=True)
class PublishResult:
    version: int
    retired: list[int]
    entries: int
    identity: VersionIdentity | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "retired": self.retired, "entries": self.entries}
        if self.identity is not None:
            out["identity"] = self.identity.to_json()
        return out


def estimate_bytes(manifest: Manifest, id_chars: int = 12) -> int:
    """What the version will take in Redis, roughly but on the high side."""
    c, d = manifest.counts, manifest.dims
    ns = 24 + id_chars  # namespace + block + id
    keys = (c.users + c.items) * (KEY_OVERHEAD + ns)
    fields = (c.users + c.user_categories) * (FIELD_OVERHEAD + id_chars + 2)
    values = sum(
        n * quant.row_bytes(manifest.dtype, dim)
        for n, dim in ((c.users, d.user), (c.items, d.item), (c.user_categories, d.uc))
    )
    return keys + fields + int(values * 1.25)


def check_room(store: PublishStore, manifest: Manifest, max_ready: int, id_chars: int = 12) -> None:
    """Refuse before writing: no ready slot can be freed (409, naming the pins) or the version does
    not fit in the store's free memory (507 with the numbers)."""
    records, active = store.records()
    ready = [r for r in records if r.state == READY]
    bases = {r.base.number for r in ready if r.base is not None}  # a ready delta keeps its base
    if manifest.base is not None:
        bases.add(manifest.base.number)
    free_slots = [r for r in ready if r.version != active and not r.pins and r.version not in bases]
    if len(ready) >= max_ready and not free_slots:
        pins = "; ".join(f"v{r.version}: {', '.join(p.holder for p in r.pins)}" for r in ready if r.pins)
        raise Conflict(
            f"{max_ready} ready versions are kept and none can be retired (active v{active}; "
            f"pinned {pins or 'none'}; bases of deltas {sorted(bases) or 'none'}); delete one or wait for "
            "its pins to end"
        )
    memory = store.memory()
    need = estimate_bytes(manifest, id_chars)
    free = memory.free_bytes
    if free is not None and need > free - MEMORY_MARGIN * memory.limit_bytes:
        raise InsufficientStorage(
            f"the version needs about {need / 2**20:.1f} MiB; Redis has {free / 2**20:.1f} MiB free of "
            f"{memory.limit_bytes / 2**20:.1f} MiB (keeping {MEMORY_MARGIN:.0%} spare); delete a version "
            "or give Redis more memory"
        )


def write_data(
    store: PublishStore,
    staging: Staging,
    bundle: Bundle,
    *,
    batch: int = 2000,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    writers: int = 1,
) -> dict[str, int]:
    """Write every row of ``bundle`` into the staging namespace, stored at the bundle's dtype (its
    :meth:`~gkc.bundle.Bundle.rows`), in pipelined batches of ``batch`` rows on ``writers`` threads (one
    builds its next batch while another waits on Redis), a heartbeat per batch (which stops the publish
    with Conflict once the version was deleted); returns new entries per block."""
    m, ns = bundle.manifest, staging.namespace
    total = m.counts.users + m.counts.user_categories + m.counts.items
    bar = tqdm(total=total, desc=f"publish v{staging.number}", unit="vec", disable=not progress, leave=False)
    written = {"users": 0, "ucs": 0, "items": 0}
    lock = threading.Lock()

    def write(kind: str, start: int) -> None:
        stop = start + batch
        rows = bundle.rows(kind, start, stop)
        if kind == "users":
            ids = bundle.user_ids[start:stop]
            new = store.write_user_vectors(ns, ids, rows)
        elif kind == "ucs":
            ids = bundle.uc_user_ids[start:stop]
            new = store.write_uc_vectors(ns, ids, bundle.uc_category_ids[start:stop], rows)
        else:
            ids = bundle.item_ids[start:stop]
            new = store.write_items(ns, ids, rows)
        bundle.release(kind, start, stop)
        store.heartbeat(staging.number)
        with lock:
            written[kind] += new
            bar.update(len(ids))
            if on_batch is not None:
                on_batch(len(ids))

    jobs = [
        (kind, start)
        for kind, n in (
            ("users", m.counts.users),
            ("ucs", m.counts.user_categories),
            ("items", m.counts.items),
        )
        for start in range(0, n, batch)
    ]
    try:
        if writers <= 1:
            for job in jobs:
                write(*job)
        else:
            _run_bounded(write, jobs, writers)
    finally:
        bar.close()
    return written


def _run_bounded(fn: Callable[[str, int], None], jobs: list[tuple[str, int]], writers: int) -> None:
    """``fn(*job)`` for every job on ``writers`` threads, at most ``2 × writers`` in flight; the first
    failure stops submitting and is raised once the running ones are done."""
    with ThreadPoolExecutor(writers, thread_name_prefix="gkc-publish") as pool:
        pending: set[Future[None]] = set()
        for job in jobs:
            if len(pending) >= 2 * writers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
            pending.add(pool.submit(fn, *job))
        for f in pending:
            f.result()


def check_counts(number: int, written: dict[str, int], counts: Counts) -> None:
    """Every entry the manifest promises was written, no more (else the version must not go ready)."""
    expected = {"users": counts.users, "ucs": counts.user_categories, "items": counts.items}
    if written != expected:
        raise PublishVerificationError(f"version {number}: wrote {written}, expected {expected}")


def key_count(ids: Bundle) -> int:
    """Keys a version holds: one hash per user (K̂_u and K̂_uc share it) and one string per item."""
    return len(np.union1d(ids.user_ids, ids.uc_user_ids)) + len(ids.item_ids)


def publish(
    store: PublishStore,
    bundle: Bundle,
    *,
    batch: int = 2000,
    max_ready: int = 5,
    samples: int = 64,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    floor: int = 0,
    replica_timeout_s: float = 10.0,
    attempts: int = 2,
    writers: int = 1,
) -> PublishResult:
    """Write ``bundle`` as a new version and make it ready (active if it is the first)."""
    m = bundle.manifest
    check_room(store, m, max_ready, _id_chars(bundle))
    check_base(m, store.records()[0])
    checksum = m.content_checksum()
    for attempt in range(1, attempts + 1):
        used_before = store.memory().used_bytes
        staging = store.begin(m.to_json(), checksum, m.dims, floor)
        log.info("publishing %s (%d entries, attempt %d)", staging.identity, entry_count(m.counts), attempt)
        try:
            written = write_data(
                store, staging, bundle, batch=batch, progress=progress, on_batch=on_batch, writers=writers
            )
            check_counts(staging.number, written, m.counts)
            verify_sample(store, staging.namespace, staging.number, bundle, samples)
            sample = sample_digests(store, staging.namespace, bundle)
            store.wait_replicated(replica_timeout_s)
            size = measured_size(store, used_before)
            retired = store.finish(
                staging.number, max_ready, key_count(bundle), sample, entry_count(m.counts), size
            )
        except (Unavailable, PublishVerificationError) as err:
            abort(store, staging, str(err))
            if attempt == attempts:
                raise Unavailable(
                    f"publish failed {attempts} times on the store; retry later: {err}"
                ) from err
            log.warning(
                "publish of %s failed on the store (%s); retrying on a fresh version", staging.identity, err
            )
            continue
        except BaseException as err:
            abort(store, staging, f"{type(err).__name__}: {err}")
            raise
        log.info("%s ready; retired %s", staging.identity, retired)
        return PublishResult(staging.number, retired, entry_count(m.counts), staging.identity)
    raise AssertionError("unreachable")


def measured_size(store: PublishStore, used_before: int) -> int:
    """What the version took in the store: its ``used_memory`` growth since the version was begun
    (publishes run one at a time per GKC; a concurrent writer elsewhere would be counted in).
    0 = unknown."""
    return max(0, store.memory().used_bytes - used_before) if used_before > 0 else 0


def entry_count(c: Counts) -> int:
    return c.users + c.user_categories + c.items


def _id_chars(bundle: Bundle) -> int:
    return max(
        1, *(arr.dtype.itemsize // 4 for arr in (bundle.user_ids, bundle.item_ids, bundle.uc_category_ids))
    )


def abort(store: PublishStore, staging: Staging, reason: str) -> None:
    """Best effort: delete a failed staging version's keys now and drop its entry (nothing was ever
    served from it). What cannot be done now is left to the janitor (retiring, or abandoned after the
    lease)."""
    try:
        state = store.retire(staging.number, f"publish failed: {reason}")
        log.warning("publish of %s failed (%s); removing it (was %s)", staging.identity, reason, state)
    except KeepError as err:
        log.warning("could not mark failed %s for cleanup: %s", staging.identity, err)
    try:
        removed = store.delete_namespace(staging.namespace)
        store.forget(staging.number)
        log.info("removed %d keys of failed %s", removed, staging.identity)
    except KeepError as err:
        log.warning("could not remove failed %s now (the janitor will): %s", staging.identity, err)


def sample_digests(store: KnowledgeReader, ns: str, ids: Bundle, n: int = 8) -> dict[str, Any]:
    """A few ids per block with a digest of the value stored for them: the restart integrity check
    reads them back (:func:`gkc.integrity.check_version`)."""
    rng = np.random.default_rng(len(ids.item_ids) + 7)
    out: dict[str, Any] = {"users": [], "ucs": [], "items": []}
    for row in rng.choice(len(ids.user_ids), min(n, len(ids.user_ids)), replace=False):
        uid = str(ids.user_ids[row])
        out["users"].append([uid, _digest(store.read(ns, uid, [], []).user)])
    for row in rng.choice(len(ids.uc_user_ids), min(n, len(ids.uc_user_ids)), replace=False):
        uid, cid = str(ids.uc_user_ids[row]), str(ids.uc_category_ids[row])
        out["ucs"].append([uid, cid, _digest(store.read(ns, uid, [cid], []).ucs[0])])
    picked = [
        str(ids.item_ids[r]) for r in rng.choice(len(ids.item_ids), min(n, len(ids.item_ids)), replace=False)
    ]
    if picked:
        values = store.read(ns, "\x00", [], picked).items
        out["items"] = [[iid, _digest(v)] for iid, v in zip(picked, values, strict=True)]
    missing = [e for block in out.values() for e in block if e[-1] is None]
    if missing:
        raise PublishVerificationError(f"sampled entries are missing right after the write: {missing[:3]}")
    return out


def verify_sample(store: KnowledgeReader, ns: str, number: int, bundle: Bundle, samples: int) -> None:
    """Read ``samples`` random users, (user, category) pairs and items back and compare bytes."""
    rng = np.random.default_rng(number)

    def row(block: str, i: int) -> bytes:
        return bundle.rows(block, int(i), int(i) + 1).tobytes()

    for r in rng.choice(len(bundle.uc_user_ids), min(samples, len(bundle.uc_user_ids)), replace=False):
        uid = str(bundle.uc_user_ids[r])
        if store.read(ns, uid, [str(bundle.uc_category_ids[r])], []).ucs[0] != row("ucs", r):
            raise PublishVerificationError(f"version {number}: K̂_uc of {uid!r} does not read back")
    for urow in rng.choice(len(bundle.user_ids), min(samples, len(bundle.user_ids)), replace=False):
        if store.read(ns, str(bundle.user_ids[urow]), [], []).user != row("users", urow):
            raise PublishVerificationError(f"version {number}: K̂_u of {bundle.user_ids[urow]!r} differs")
    items = rng.choice(len(bundle.item_ids), min(samples, len(bundle.item_ids)), replace=False)
    if len(items):
        raw = store.read(ns, "\x00", [], [str(i) for i in bundle.item_ids[items]])
        for got, irow in zip(raw.items, items, strict=True):
            if got != row("items", irow):
                raise PublishVerificationError(f"version {number}: K̂_i of {bundle.item_ids[irow]!r} differs")
