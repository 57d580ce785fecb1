"""Back-pressure: a bounded number of requests in the scoring pipeline, a bounded queue before it.

At most ``limit`` requests are admitted at once (each holds its slot from the GKC call to the end of the
model step); up to ``max_queue`` more wait for a slot, each at most ``max_wait_s`` and never past its own
deadline. A request that finds the queue full, or whose wait runs out, is refused with
:class:`services.errors.Overloaded` (gRPC ``RESOURCE_EXHAUSTED``, HTTP 503 + ``Retry-After``) at once.

Why: without a bound, every request starts its GKC call as it arrives, and under a burst the calls'
timers run while the ranker's own CPUs are busy scoring others, so GKC answers that came in time are read
too late and the request degrades (``gkc_timeout``) although GKC was healthy. Queued requests have no
timer running: the request's time budget (``RANKER_REQUEST_DEADLINE_S``) starts at admission, while a
caller's own gRPC deadline stays absolute. asyncio only (one event loop), no transport imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from services.errors import Overloaded


class Admission:
    """``limit`` ≤ 0 admits everything (no back-pressure)."""

    def __init__(
        self,
        limit: int,
        max_queue: int,
        max_wait_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_after_s: float = 1.0,
    ) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.waiting = 0
        self._free = asyncio.Semaphore(max(limit, 1))

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[float]:
        """Hold a slot for the block; yields the seconds spent waiting for it. ``deadline``: a ``clock()``
        time after which waiting is pointless (the caller's own deadline)."""
        if self.limit <= 0:
            yield 0.0
            return
        t0 = self.clock()
        if self.in_flight >= self.limit or self.waiting:
            if self.waiting >= self.max_queue:
                raise Overloaded(
                    f"ranker at capacity: {self.in_flight} requests scoring and {self.waiting} queued "
                    f"(RANKER_MAX_IN_FLIGHT={self.limit}, RANKER_MAX_QUEUE={self.max_queue}); retry later",
                    self.retry_after_s,
                )
            wait = self.max_wait_s if deadline is None else min(self.max_wait_s, deadline - t0)
            if wait <= 0:
                raise Overloaded("ranker at capacity and no time left to wait for a slot", self.retry_after_s)
            self.waiting += 1
            try:
                await asyncio.wait_for(self._free.acquire(), wait)
            except TimeoutError:
                raise Overloaded(
                    f"ranker at capacity: no free slot within {wait * 1000:.0f} ms "
                    f"({self.in_flight} scoring, {self.waiting - 1} more queued); retry later",
                    self.retry_after_s,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._free.acquire()
        self.in_flight += 1
        try:
            yield self.clock() - t0
        finally:
            self.in_flight -= 1
            self._free.release()
