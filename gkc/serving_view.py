"""A serving process' view of the version registry: which versions it may answer from, for how long.

The view is re-read every ``ttl_s`` (another process may publish, activate or retire; in the background,
so that no request waits for it) and at once when a version nobody has seen yet is asked for. When the
registry cannot be read (its Redis node fails over, a network blip), the last good view keeps serving,
but never longer than ``stale_s`` after it was read:
that bound is what makes deletion safe. A version that leaves the ready set is deleted only
``stale_s + grace`` after it was marked retiring (:class:`gkc.janitor.Janitor`), so no process can still
answer from it by then.

Age is measured from the moment the read *started*, so a slow registry read cannot stretch it. When a
version's identity disappears from the view (retired, damaged, or lost together with Redis' data) the
``on_drop`` callback gets its namespace (the item cache forgets its rows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gkc.store import RegistryView, VersionRecord, VersionView
from services.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

#: Least time between two registry reads forced by requests for a version the view has not seen.
FORCED_READ_GAP_S = 0.05


class ServingView:
    def __init__(
        self,
        registry: VersionView,
        *,
        ttl_s: float = 1.0,
        stale_s: float = 10.0,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.stale_s = max(stale_s, ttl_s)
        self.on_drop = on_drop
        self._ready: dict[int, VersionRecord] = {}
        self._active: int | None = None
        self._epoch: str | None = None
        self._read_at = -float("inf")  # monotonic start of the last good read
        self._lock = threading.Lock()
        self._refreshing = False
        self.last_error: str | None = None
        #: Set while the store must not be served from (e.g. it may evict keys): every read is
        #: refused with this reason (:class:`gkc.health.HealthMonitor` sets and clears it).
        self.refusal: str | None = None

    @property
    def active(self) -> int | None:
        return self._active

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._read_at

    def ready(self) -> dict[int, VersionRecord]:
        return dict(self._ready)

    def refresh(self) -> RegistryView:
        """Read the registry now (raises Unavailable when it cannot be read)."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> RegistryView:
        started = time.monotonic()
        try:
            view = self.registry.view()
        except Unavailable as err:
            if self.last_error is None:
                log.warning(
                    "registry unreadable; serving the last good view for up to %.0f s: %s", self.stale_s, err
                )
            self.last_error = err.message
            raise
        if self.last_error is not None:
            log.info("registry readable again")
            self.last_error = None
        ready = {r.version: r for r in view.records}
        if self._epoch is not None and view.epoch != self._epoch:
            log.error(
                "the registry's epoch changed (%s -> %s): Redis lost or replaced its data; "
                "dropping every cached version",
                self._epoch,
                view.epoch,
            )
        gone = {r.namespace for r in self._ready.values()} - {r.namespace for r in ready.values()}
        self._ready, self._active, self._epoch, self._read_at = ready, view.active, view.epoch, started
        if self.on_drop is not None:
            for ns in gone:
                self.on_drop(ns)
        return view

    def _usable(self, now: float) -> bool:
        return now - self._read_at <= self.stale_s

    def _ensure_fresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._read_at <= self.ttl_s and not force:
            return
        if not force and self.ttl_s > 0 and self._usable(now):
            # stale but usable: refresh in the background, answer from the current view meanwhile, so
            # that no request waits on a slow or failing registry read while the view may still serve
            if not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh_in_background, name="gkc-view", daemon=True).start()
            return
        with self._lock:
            if not force and time.monotonic() - self._read_at <= self.ttl_s:
                return  # another thread refreshed it meanwhile
            self._refresh_or_keep()

    def _refresh_or_keep(self) -> None:
        """Read the registry (lock held); when it cannot be read, keep the last good view while it is
        usable, else UNAVAILABLE."""
        try:
            self._refresh_locked()
        except Unavailable:
            if not self._usable(time.monotonic()):
                raise Unavailable(
                    f"the version registry has been unreadable for over {self.stale_s:.0f} s: "
                    f"{self.last_error}"
                ) from None

    def _refresh_in_background(self) -> None:
        try:
            with self._lock:
                self._refresh_locked()
        except Exception as err:  # logged by _refresh_locked; the view serves until it is unusable
            log.debug("background registry read failed: %s", err)
        finally:
            self._refreshing = False

    def resolve(self, version: int) -> VersionRecord:
        """The ready version that answers ``version`` (0 = active), or NotFound."""
        if self.refusal is not None:
            raise Unavailable(self.refusal)
        self._ensure_fresh()
        if version == 0:
            if self._active is None:
                self._ensure_fresh(force=time.monotonic() - self._read_at > 0.05)
            if self._active is None:
                raise NotFound("no knowledge version has been published yet")
            record = self._ready.get(self._active)
            if record is None:
                raise NotFound(f"the active version {self._active} is not ready (damaged?); activate another")
            return record
        record = self._ready.get(version)
        if record is None:
            # Unseen: perhaps published after the last read began. Read again (a read that begins after
            # this request arrived), but at most one such read per FORCED_READ_GAP_S: a flood of unknown
            # versions must not become a flood of registry reads. Waiting for the gap (this runs in a
            # worker thread) instead of refusing: a version the publish call has just reported ready
            # was answered NOT_FOUND by a process whose last read was a few ms old.
            asked = time.monotonic()
            gap = self._read_at + FORCED_READ_GAP_S - asked
            if gap > 0:
                time.sleep(gap)
            self._read_since(asked)
            record = self._ready.get(version)
        if record is None:
            raise NotFound(f"knowledge version {version} does not exist or is not ready")
        return record

    def _read_since(self, since: float) -> None:
        """Make sure a registry read began at or after ``since`` (one read serves every waiting caller)."""
        with self._lock:
            if self._read_at < since:
                self._refresh_or_keep()

    def base_of(self, record: VersionRecord) -> VersionRecord | None:
        """A delta version's base as the view holds it (None for a full version). NotFound when the base
        is not ready as the very identity the delta names: a delta is never served without its base."""
        base = record.base
        if base is None:
            return None
        found = self._ready.get(base.number)
        if found is None or found.identity != base:
            raise NotFound(
                f"knowledge version {record.version} is a delta over {base}, which is not ready (deleted, "
                "damaged or replaced): it cannot be served"
            )
        return found
