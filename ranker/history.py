"""Behaviour sequences in the ranker's core: click events, their stored form, the request's window.

No Redis here (``ranker.sequence_store`` is the Redis side): this module says what a click event is, how
a stored click is spelled, and which stored clicks make a request's history — by the one rule offline
training uses (:mod:`contract.sequences`: the last N clicks strictly before the request's time).

A user's stored clicks are ordered by ``(ts, seq)``: ``ts`` the click's time (unix seconds, the log's
``ts``), ``seq`` its arrival order — the row number for a backfilled log (so ties keep file order, like
the trainer's stable sort) and a nanosecond stamp for ingested events (after every backfilled row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contract.sequences import last_clicks_before
from services.errors import InvalidArgument

#: Separates the fields of a stored click; refused inside ids.
SEP = "\x1f"
SEQ_DIGITS = 20
#: Events per ``RecordEvents`` / ``POST /v1/events`` batch.
MAX_EVENTS_PER_BATCH = 1000
MAX_EVENT_ID_LEN = 128
#: Clicks more than this far in the future (client clock skew) are refused.
MAX_FUTURE_S = 300.0


@dataclass(frozen=True)
class ClickEvent:
    """One click: ``event_id`` makes a redelivery harmless (recorded once per user)."""

    event_id: str
    user_id: str
    item_id: str
    category_id: str
    ts: float


@dataclass(frozen=True)
class History:
    """A request's behaviour sequence, oldest first, canonical string ids."""

    items: list[str]
    categories: list[str]

    def __len__(self) -> int:
        return len(self.items)


EMPTY_HISTORY = History([], [])


def member(seq: int, item_id: str, category_id: str) -> str:
    """A stored click (its score is the click's ``ts``): fixed-width ``seq`` first, so clicks in the
    same second sort by arrival."""
    return f"{seq:0{SEQ_DIGITS}d}{SEP}{item_id}{SEP}{category_id}"


def window(stored: Sequence[tuple[bytes | str, float]], before: float, max_len: int) -> History:
    """The request's history from one user's stored clicks (ascending ``(ts, seq)``, as Redis returns a
    sorted set): the last ``max_len`` strictly before ``before``."""
    if not stored:
        return EMPTY_HISTORY
    ts = np.fromiter((score for _, score in stored), dtype=np.float64, count=len(stored))
    items, cats = [], []
    for raw, _ in stored[last_clicks_before(ts, before, max_len)]:
        text = raw.decode() if isinstance(raw, bytes) else raw
        _, item, cat = text.split(SEP)
        items.append(item)
        cats.append(cat)
    return History(items, cats)


def check_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is required")
    if SEP in value:
        raise InvalidArgument(f"{what} {value!r} contains the reserved character \\x1f")
    return value


def validate_events(events: Sequence[ClickEvent], now: float) -> None:
    """Refuse a batch that cannot be recorded exactly as sent (nothing of it is recorded then)."""
    if not events:
        raise InvalidArgument("at least one event is required")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise InvalidArgument(f"{len(events)} events; at most {MAX_EVENTS_PER_BATCH} per batch")
    for k, e in enumerate(events):
        where = f"event {k}"
        check_id(e.event_id, f"{where}: event_id")
        if len(e.event_id) > MAX_EVENT_ID_LEN:
            raise InvalidArgument(f"{where}: event_id longer than {MAX_EVENT_ID_LEN} characters")
        check_id(e.user_id, f"{where}: user_id")
        check_id(e.item_id, f"{where}: item_id")
        check_id(e.category_id, f"{where}: category_id")
        if not math.isfinite(e.ts) or e.ts < 0:
            raise InvalidArgument(f"{where}: ts must be unix seconds >= 0, got {e.ts}")
        if e.ts > now + MAX_FUTURE_S:
            raise InvalidArgument(f"{where}: ts {e.ts} is more than {MAX_FUTURE_S:.0f} s in the future")


class HistorySource(Protocol):
    """Where the ranker reads a user's clicks: one round trip per request; ``Unavailable`` when down."""

    max_len: int

    async def history(self, user_id: str, before: float, timeout_s: float) -> History: ...


class EventSink(Protocol):
    """Where click events are recorded; returns how many were new (redeliveries are not)."""

    async def record(self, events: Sequence[ClickEvent]) -> int: ...
