"""Reading what a version holds from the version itself (a mixin of :class:`gkc.redis_store.RedisStore`).

A sharded delta (``keep export --base V --gkc-redis``) has no bundle of its base: what the base holds is
read from the base in Redis, in work proportional to the base (its key log) and to the delta (the
hash fields of the delta's users), never by scanning the keyspace (:mod:`gkc.delta_base`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from gkc.redis_keys import keylog_key, user_key
from gkc.redis_registry import guard

#: Key-log elements read per round trip (each is one write batch's keys).
KEYLOG_READ = 64


class VersionKeyReads:
    """Needs the store's ``bulk`` client, ``cluster`` flag and ``_by_node`` (RedisStore has them)."""

    bulk: Any
    cluster: bool

    def _by_node(
        self, commands: Sequence[tuple[str, str | bytes, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        raise NotImplementedError

    def logged_keys(self, ns: str, part: int = 0, parts: int = 1) -> Iterator[list[str]]:
        """The version's key log (its keys without the namespace: ``u:<id>`` / ``i:<id>``), one write
        batch at a time; ``part`` of ``parts`` reads every ``parts``-th batch (ranks split the log).
        A key may be listed more than once (a user's K̂_u and K̂_uc are written by different batches)."""
        log = keylog_key(ns)
        start = 0
        with guard():
            while chunk := self.bulk.lrange(log, start, start + KEYLOG_READ - 1):
                for offset, element in enumerate(chunk):
                    if (start + offset) % parts == part:
                        yield json.loads(element)
                start += len(chunk)

    def user_fields(self, ns: str, user_ids: Sequence[str]) -> list[list[str]]:
        """Each user's hash fields in the version (``u`` for K̂_u, ``c:<category>`` per K̂_uc; none for a
        user it lacks), pipelined."""
        keys = [user_key(ns, u) for u in user_ids]
        with guard():
            if self.cluster:
                replies = self._by_node([("hkeys", k, (), {}) for k in keys])
            else:
                pipe = self.bulk.pipeline(transaction=False)
                for key in keys:
                    pipe.hkeys(key)
                replies = pipe.execute()
        return [[f.decode() if isinstance(f, bytes) else str(f) for f in reply] for reply in replies]
