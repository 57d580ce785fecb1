"""Consumer pins, client side: hold a lease on the knowledge version you read, renewed in the background.

GKC never retires a version while a lease on it is live (docs/gkc.md, "Pins"). A consumer takes one per
version it depends on — the ranker per loaded model, a running ``keep train`` / ``keep evaluate`` — and
renews it every ``ttl_s / 3``; when the holder dies the renewals stop and the lease ends after ``ttl_s``.

:class:`Lease` holds one pin; :class:`LeaseSet` holds several by key (a ranker's models) and replaces
them as models come and go. Renewal failures are logged and retried; they never raise into the caller:
a consumer keeps serving while GKC's REST side is briefly away, and the lease's remaining ``ttl_s``
covers that.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gkc.client import GkcOpsClient
from services.errors import KeepError

log = logging.getLogger(__name__)


class Lease:
    """One pin on ``version`` held by ``holder``; :meth:`start` takes it (raising when GKC refuses)."""

    def __init__(
        self,
        ops: GkcOpsClient,
        version: int,
        holder: str,
        *,
        ttl_s: float = 60.0,
        publish_id: str | None = None,
    ) -> None:
        self.ops = ops
        self.version = version
        self.holder = holder
        self.ttl_s = ttl_s
        #: The identity the consumer expects; a pin on another publish of this number is refused.
        self.publish_id = publish_id
        self.pin: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gkc-lease-{version}", daemon=True)

    def start(self) -> Lease:
        self.renew(raise_errors=True)
        self._thread.start()
        return self

    def renew(self, *, raise_errors: bool = False) -> bool:
        try:
            pin = self.ops.pin(self.version, self.holder, self.ttl_s, self.publish_id or "")
        except KeepError as err:
            if raise_errors:
                raise
            if self.last_error != err.message:
                log.warning(
                    "could not renew the pin on GKC version %d (%s): %s", self.version, self.holder, err
                )
            self.last_error = err.message
            return False
        self.pin, self.last_error = pin, None
        return True

    def close(self) -> None:
        """Stop renewing and drop the pin (best effort: it ends by itself after ``ttl_s`` anyway)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self.ops.unpin(self.version, self.holder)
        except KeepError as err:
            log.info("could not drop the pin on GKC version %d: %s", self.version, err)

    def _run(self) -> None:
        period = max(0.5, self.ttl_s / 3)
        while not self._stop.wait(period):
            self.renew()


class LeaseSet:
    """Leases by key (e.g. a ranker's model names): :meth:`hold` takes or moves one, :meth:`release`
    drops it, :meth:`close` drops all."""

    def __init__(self, ops: GkcOpsClient, holder_prefix: str, *, ttl_s: float = 60.0) -> None:
        self.ops = ops
        self.holder_prefix = holder_prefix
        self.ttl_s = ttl_s
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def hold(self, key: str, version: int, publish_id: str | None = None) -> Lease:
        with self._lock:
            old = self._leases.get(key)
            if old is not None and old.version == version and old.publish_id == publish_id:
                return old
            lease = Lease(
                self.ops, version, f"{self.holder_prefix}:{key}", ttl_s=self.ttl_s, publish_id=publish_id
            )
            lease.start()
            self._leases[key] = lease
        if old is not None:
            old.close()
        return lease

    def release(self, key: str) -> None:
        with self._lock:
            lease = self._leases.pop(key, None)
        if lease is not None:
            lease.close()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                k: {
                    "version": lease.version,
                    "holder": lease.holder,
                    "error": lease.last_error,
                    "since": lease.pin,
                }
                for k, lease in self._leases.items()
            }

    def close(self) -> None:
        with self._lock:
            leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            lease.close()


def wait_pinned(ops: GkcOpsClient, version: int, holder: str, timeout_s: float = 10.0) -> bool:
    """True once ``holder`` shows in ``GET /v1/versions/{version}`` (tests, scripts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p["holder"] == holder for p in ops.version(version).get("pins", [])):
            return True
        time.sleep(0.1)
    return False
