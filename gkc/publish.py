"""Publishing a bundle as a new version, and cleaning up versions that are retired or abandoned.

A publish writes everything under a fresh version number in state ``staging`` (invisible to readers),
checks that every write created a new entry (counts match the manifest) and reads a random sample back
bit-exact, then flips the version to ``ready`` in one atomic registry update. A publisher that dies
half-way leaves a staging version that no reader can see; the janitor abandons it once its heartbeat is
older than the lease and deletes its keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from gkc.bundle import Bundle, iter_rows
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
        bar = tqdm(total=total, desc=f"publish v{version}", unit="vec", disable=not progress, leave=False)
        written = {"users": 0, "ucs": 0, "items": 0}

        def step(kind: str, n: int, new: int) -> None:
            written[kind] += new
            bar.update(n)
            store.heartbeat(version)
            if on_batch is not None:
                on_batch(n)

        for ids, vecs in iter_rows(bundle.user_ids, bundle.user_vectors, batch):
            step("users", len(ids), store.write_users(version, ids, vecs, None, None))
        for start in range(0, len(bundle.uc_user_ids), batch):
            sl = slice(start, start + batch)
            ids = bundle.uc_user_ids[sl]
            new = store.write_users(version, ids, None, bundle.uc_category_ids[sl], bundle.uc_vectors[sl])
            step("ucs", len(ids), new)
        for ids, vecs in iter_rows(bundle.item_ids, bundle.item_vectors, batch):
            step("items", len(ids), store.write_items(version, ids, vecs))
        bar.close()
        expected = {"users": m.counts.users, "ucs": m.counts.user_categories, "items": m.counts.items}
        if written != expected:
            raise PublishVerificationError(f"version {version}: wrote {written}, expected {expected}")
        verify_sample(store, version, bundle, samples)
        retired = store.finish(version, max_ready)
    except BaseException:
        _give_up(store, version)
        raise
    log.info("version %d ready; retired %s", version, retired)
    return PublishResult(version=version, retired=retired, entries=total)


def _give_up(store: KnowledgeStore, version: int) -> None:
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
