"""The behaviour-sequence store on Redis: one bounded, expiring sorted set of clicks per user.

Layout (its own Redis database or instance, never GKC's knowledge keys):

- ``keep:seq:{<user>}``: sorted set, score = the click's ``ts``, member = ``ranker.history.member``
  (``seq`` + item + category), so Redis keeps clicks in ``(ts, arrival)`` order even when they arrive out
  of order; trimmed to the newest ``max_len`` after every write; TTL ``ttl_s``, renewed by every write
  (a user idle that long is forgotten).
- ``keep:seq:{<user>}:e:<event_id>``: an ingested event's dedup mark (``SET NX``, TTL ``dedup_ttl_s``):
  a redelivered event is not recorded twice. Same hash tag as the user's set: one cluster slot.

A request reads the whole set in one ``ZRANGE`` (at most ``max_len`` entries) and cuts its window with
:func:`ranker.history.window` (the rule shared with training). Backfilled rows carry their row number
as ``seq`` and no dedup mark: rerunning a backfill adds the same members again, which changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from gkc.local_redis import EmbeddedRedis
from ranker.history import ClickEvent, History, member, window
from services.errors import Unavailable

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30 * 86_400
DEFAULT_DEDUP_TTL_S = 86_400

# KEYS[1] the user's set, KEYS[2..] dedup marks; ARGV: max_len, ttl, dedup ttl, then (ts, member) pairs.
_RECORD = """
local added = 0
for i = 2, #KEYS do
  local j = 2 * i
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[j], ARGV[j + 1])
    added = added + 1
  end
end
if added > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return added
"""


def seq_key(user_id: str) -> str:
    return f"keep:seq:{{{user_id}}}"


def dedup_key(user_id: str, event_id: str) -> str:
    return f"keep:seq:{{{user_id}}}:e:{event_id}"


class RedisSequenceStore:
    """Reads (async, per request) and writes (ingest: async; backfill: sync pipelines) of the store."""

    def __init__(
        self,
        url: str,
        *,
        max_len: int,
        ttl_s: int = DEFAULT_TTL_S,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        timeout_s: float = 0.05,
    ) -> None:
        self.url = url
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.dedup_ttl_s = dedup_ttl_s
        self._async = aredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._record = self._async.register_script(_RECORD)

    async def close(self) -> None:
        await self._async.aclose()  # type: ignore[attr-defined]  # (stubs predate aclose)

    async def history(self, user_id: str, before: float, timeout_s: float) -> History:
        """The user's last ``max_len`` clicks strictly before ``before`` (one ``ZRANGE``)."""
        try:
            stored = await asyncio.wait_for(
                self._async.zrange(seq_key(user_id), 0, -1, withscores=True), timeout_s
            )
        except (redis.RedisError, OSError, TimeoutError) as err:
            raise Unavailable(f"feature store at {self.url}: {type(err).__name__}: {err}") from err
        return window(stored, before, self.max_len)

    async def record(self, events: Sequence[ClickEvent]) -> int:
        """Record a validated batch (one script per user, one pipeline); the number of new clicks."""
        by_user: dict[str, list[ClickEvent]] = defaultdict(list)
        for e in events:
            by_user[e.user_id].append(e)
        stamp = time.time_ns()  # arrival order: after every backfilled row, batch order kept
        pipe = self._async.pipeline(transaction=False)
        k = 0
        for user, evs in by_user.items():
            keys = [seq_key(user)] + [dedup_key(user, e.event_id) for e in evs]
            args: list[Any] = [self.max_len, self.ttl_s, self.dedup_ttl_s]
            for e in evs:
                args += [repr(float(e.ts)), member(stamp + k, e.item_id, e.category_id)]
                k += 1
            await self._record(keys=keys, args=args, client=pipe)
        try:
            added = await pipe.execute()
        except (redis.RedisError, OSError) as err:
            raise Unavailable(f"feature store at {self.url}: {type(err).__name__}: {err}") from err
        return int(sum(added))


def backfill_batch(
    client: redis.Redis, rows: Iterator[tuple[int, str, str, str, float]], *, max_len: int, ttl_s: int
) -> int:
    """Add clicks ``(row number, user, item, category, ts)`` in one pipeline, then trim and expire each
    touched user's set once. Returns the number of clicks sent."""
    pipe = client.pipeline(transaction=False)
    users: set[str] = set()
    n = 0
    for row, user, item, cat, ts in rows:
        pipe.zadd(seq_key(user), {member(row, item, cat): ts})
        users.add(user)
        n += 1
    for user in users:
        pipe.zremrangebyrank(seq_key(user), 0, -(max_len + 1))
        pipe.expire(seq_key(user), ttl_s)
    pipe.execute()
    return n


@contextlib.contextmanager
def embedded(data_dir: str | os.PathLike[str]) -> Iterator[str]:
    """The ranker's embedded store under ``data_dir`` (a private redis-server with AOF, as GKC starts
    its own): reuse the one already answering on its socket (a running ranker), else start one for the
    duration. Yields its URL."""
    server = EmbeddedRedis(Path(data_dir))
    alive = False
    with (
        contextlib.suppress(redis.RedisError, OSError),
        redis.Redis.from_url(server.url, socket_timeout=1) as c,
    ):
        alive = bool(c.ping())
    if alive:
        yield server.url
        return
    server.start()
    log.info("embedded feature store at %s (data in %s)", server.url, data_dir)
    try:
        yield server.url
    finally:
        server.stop()
