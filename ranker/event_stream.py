"""Click events from a Redis Stream, read by a consumer group (every ranker replica shares the work).

Producers append one entry per click to ``RANKER_EVENTS_STREAM`` (default ``keep:events``) on the
sequence store's Redis::

    XADD keep:events MAXLEN ~ 1000000 * event_id e-81 user_id u42 item_id i7 category_id c3 ts 1733150000

(``ts`` optional: the entry's own time then). The ranker reads with ``XREADGROUP`` (group
``RANKER_EVENTS_GROUP``, one consumer per process), records a batch through the same path as
``POST /v1/events`` (``RankerService.record_events``: validation, dedup by ``event_id``) and acknowledges
it only once recorded. A batch that could not be recorded (the store down) stays pending and is
retried from this consumer's pending list first; entries left pending by a consumer that died are
claimed after ``claim_idle_s`` (``XAUTOCLAIM``). Delivery is at least once; the dedup mark makes it
exactly once in the store. An entry that breaks the contract is logged, counted
(``keep_ranker_events_total{transport="stream",result="invalid"}``) and acknowledged, so it never blocks
the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from ranker.history import ClickEvent, validate_events
from services.errors import KeepError

log = logging.getLogger(__name__)

Record = Callable[[Sequence[ClickEvent], str], Awaitable[int]]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_entry(fields: dict[bytes, bytes], entry_id: bytes, now: float) -> ClickEvent:
    """One stream entry as a validated event (``KeepError`` when it breaks the contract)."""

    def text(name: str) -> str:
        value = fields.get(name.encode(), b"")
        return value.decode(errors="replace")

    raw_ts = text("ts")
    try:
        ts = float(raw_ts) if raw_ts else int(entry_id.split(b"-")[0]) / 1000.0
    except ValueError as err:
        raise ValueError(f"ts {raw_ts!r} is not a number") from err
    event = ClickEvent(text("event_id"), text("user_id"), text("item_id"), text("category_id"), ts)
    validate_events([event], now)
    return event


class StreamConsumer:
    def __init__(
        self,
        url: str,
        record: Record,
        *,
        stream: str = "keep:events",
        group: str = "ranker",
        consumer: str | None = None,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
        on_invalid: Callable[[int], None] | None = None,
    ) -> None:
        # no socket timeout: XREADGROUP blocks up to block_ms on purpose
        self.client = aredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=block_ms / 1000 + 5)
        self.url = url
        self.record = record
        self.stream, self.group = stream, group
        self.consumer = consumer or consumer_name()
        self.batch, self.block_ms, self.claim_idle_s = batch, block_ms, claim_idle_s
        self.on_invalid = on_invalid
        self._next_claim = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def step(self) -> int:
        """One round: this consumer's pending entries first, else claimed or new ones; returns how many
        entries were handled (recorded, duplicate or invalid) and acknowledged."""
        entries = await self._read("0")  # own pending (a batch that failed before)
        if not entries and time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_s / 3
            claimed = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, int(self.claim_idle_s * 1000), "0-0", count=self.batch
            )
            entries = [e for e in claimed[1] if e[1]]
        if not entries:
            entries = await self._read(">", block=True)
        if not entries:
            return 0
        now = time.time()
        events: list[ClickEvent] = []
        invalid = 0
        for entry_id, fields in entries:
            try:
                events.append(parse_entry(fields, entry_id, now))
            except (KeepError, ValueError) as err:
                invalid += 1
                log.error(
                    "event stream %s: entry %s refused and acknowledged: %s", self.stream, entry_id, err
                )
        if events:
            await self.record(events, "stream")  # raises when the store is down: nothing acknowledged
        if invalid and self.on_invalid is not None:
            self.on_invalid(invalid)
        await self.client.xack(self.stream, self.group, *[e[0] for e in entries])
        return len(entries)

    async def _read(self, start: str, block: bool = False) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.batch,
            block=self.block_ms if block else None,
        )
        return [e for _, batch in reply or [] for e in batch if e[1]] if reply else []

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; a fault is logged (once per 10 s) and retried after a second."""
        last_loud = -1e9
        while not stop.is_set():
            try:
                await self.ensure_group()
                while not stop.is_set():
                    await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the store down, a failed record: retry, never die
                if time.monotonic() - last_loud >= 10.0:
                    last_loud = time.monotonic()
                    log.error("event stream %s at %s: %s; retrying", self.stream, self.url, err)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def close(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]  # (stubs predate aclose)
