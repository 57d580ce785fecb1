"""The janitor: a background thread of GKC's main process that cleans up and watches the store.

Each pass (every ``interval_s``, or at once after :meth:`Janitor.kick`):

- staging versions whose publisher stopped heartbeating for ``lease_s`` → retiring;
- pins whose holder stopped renewing them are dropped;
- a retiring version's keys are deleted **only** ``delete_after_s`` after it was marked retiring
  (two-phase deletion): every serving process re-reads the registry at least every
  ``GKC_REGISTRY_STALE_S`` or stops answering (:mod:`gkc.serving_view`), so by then none can still
  answer from it. Deletion reads the version's keys from its own key log and UNLINKs them in batches
  (memory freed off Redis' main thread; never a scan of the keyspace, never one blocking call); then
  the registry entry is dropped;
- the registry's shadow (:mod:`gkc.integrity`) takes in what changed; when the registry's epoch changed
  (Redis lost its data, or evicted the registry), the start-up check runs again: versions that are gone
  are listed ``damaged`` ("lost");
- when asked (:meth:`Janitor.sweep_soon`: at start, after a publish that could not clean up after
  itself, after the registry's epoch changed), keys in a namespace that no registry entry names
  (orphans of a failover or a crash) are deleted;
- when the store evicted keys since the last pass (only possible where an eviction policy was
  explicitly accepted), every ready version's key count is verified and failing ones are marked
  ``damaged``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gkc.integrity import IntegrityStore, Shadow, check_versions, reconcile, record_lost
from gkc.store import READY, RETIRING
from services.errors import KeepError

log = logging.getLogger(__name__)


class Janitor:
    def __init__(
        self,
        store: IntegrityStore,
        *,
        lease_s: float,
        delete_after_s: float,
        interval_s: float = 5.0,
        batch: int = 1000,
        shadow: Shadow | None = None,
        on_damaged: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.delete_after_s = delete_after_s
        self.interval_s = interval_s
        self.batch = batch
        self.shadow = shadow or Shadow()
        self.on_damaged = on_damaged
        self._evicted: int | None = None
        self._sweep = True  # once at start
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gkc-janitor", daemon=True)

    def start(self) -> Janitor:
        self._thread.start()
        return self

    def kick(self) -> None:
        self._wake.set()

    def sweep_soon(self) -> None:
        """Look for orphaned keys in the next pass (a full SCAN of GKC's keys)."""
        self._sweep = True
        self._wake.set()

    def sweep_orphans(self) -> int:
        """Delete namespaces that no registry entry names; returns keys removed.

        A publish registers its version before it writes, so a namespace without an entry is an
        orphan; the registry is read again after the scan so that a publish begun meanwhile is seen."""
        present = self.store.count_keys()
        if not present:
            return 0
        records, _ = self.store.records()
        orphans = set(present) - {r.namespace for r in records}
        records, _ = self.store.records()
        orphans -= {r.namespace for r in records}
        removed = 0
        for ns in sorted(orphans):
            removed += self.store.delete_namespace(ns, self.batch, scan=True)
            log.warning("deleted %d orphaned keys under %s (no registry entry names them)", present[ns], ns)
        return removed

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def run_once(self) -> list[int]:
        """One pass; returns the versions whose data was deleted."""
        store = self.store
        seen = store.view().epoch
        if self.shadow.epoch is not None and seen != self.shadow.epoch:
            # Redis lost its data (or evicted the registry) while GKC ran: say so, list what is gone
            self._problems(reconcile(store, self.shadow, sample=False))
            self._sweep = True
        epoch = store.ensure_epoch()
        store.abandon_stale(self.lease_s)
        store.expire_pins()
        self._watch_evictions()
        now = store.now()
        records, _ = store.records()
        lost = record_lost(store, self.shadow, records)  # vanished while ready: lost, not deleted
        if lost:
            for line in lost:
                log.error("integrity: %s", line)
            self._problems(lost)
            records, _ = store.records()
        self.shadow.observe(records, epoch)  # before deleting: what is deleted was seen retiring
        done = []
        for record in records:
            if record.state == RETIRING and now - record.updated >= self.delete_after_s:
                removed = store.delete_namespace(record.namespace, self.batch, scan=not record.keylog)
                store.forget(record.version)
                log.info("deleted %s (%d keys)", record.identity, removed)
                done.append(record.version)
        if self._sweep:
            self._sweep = False
            self.sweep_orphans()
        self.shadow.save()
        return done

    def _problems(self, lines: list[str]) -> None:
        if lines and self.on_damaged is not None:
            self.on_damaged(lines)

    def _watch_evictions(self) -> None:
        evicted = self.store.memory().evicted_keys
        if self._evicted is not None and evicted > self._evicted:
            log.error(
                "Redis evicted %d keys since the last check; verifying every ready version",
                evicted - self._evicted,
            )
            records, _ = self.store.records()
            damaged = check_versions(self.store, [r for r in records if r.state == READY], sample=False)
            self._problems(damaged)
            for line in damaged:
                log.error("integrity: %s", line)
        self._evicted = evicted

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except KeepError as err:
                log.warning("janitor pass failed: %s", err)
            except Exception:
                log.exception("janitor pass failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()
