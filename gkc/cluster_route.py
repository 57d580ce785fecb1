"""Commands on a Redis Cluster grouped by the primary that owns each key's slot: one plain pipeline per
node on that node's own connection, and a per-node breaker, so that a dead master costs the requests
that need its keys and not everyone's.

Why not redis-py's cluster pipeline for reads: on every connection error to a node it re-reads the
whole topology (``NodesManager.initialize``), which also marks the pooled connections of the healthy
nodes for reconnect. Under read load during a master's failover that is one re-read per failed request
(~80 a second in ``tests/reliability/test_gkc_stuck_redis.py`` case 12), and requests whose keys live
on healthy masters lost a third to two thirds of their rate. Here a node that fails is marked down for
``down_s``: requests that need its slots fail at once (:class:`Unavailable`, retryable) without a
connection attempt, and the topology is re-read at most once per ``refresh_s`` (one thread at a time).
Once the cluster has promoted a replica, the re-read slot table routes around the dead node.

A ``MOVED`` / ``ASK`` reply (slots moving: a resharding, a failover) schedules a re-read too; with
``follow_redirects`` the commands that got one are re-sent one by one through redis-py's cluster client,
which follows the redirection (reads), else the batch fails with :class:`Unavailable` (bulk writes: the
publish retries on a fresh version, and a half-applied batch would fail its count check anyway).
Per-command routing also costs redis-py's cluster pipeline far more Python than a plain pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.errors import Unavailable

log = logging.getLogger(__name__)

#: ``(command, key, args, kwargs)``: ``getattr(pipeline, command)(key, *args, **kwargs)``.
Command = tuple[str, str | bytes, tuple[Any, ...], dict[str, Any]]


class NodeRouter:
    """Runs commands on a :class:`RedisCluster`'s primaries grouped by node; thread-safe."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        follow_redirects: bool,
        down_s: float = 0.5,
        refresh_s: float = 0.5,
    ) -> None:
        self.client = client
        self.follow_redirects = follow_redirects
        self.down_s = down_s
        self.refresh_s = refresh_s
        #: node name -> monotonic time until which requests for it fail without trying it
        self._down: dict[str, float] = {}
        self._refreshed_at = 0.0
        self._refresh_lock = threading.Lock()
        #: topology re-reads done (tests and metrics read it)
        self.refreshes = 0

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """Replies in the order of ``commands``; raises :class:`Unavailable` when a node they need is
        down, and redis-py's errors otherwise."""
        groups: dict[str, tuple[Any, list[int]]] = {}
        for pos, (_, key, _, _) in enumerate(commands):
            node = self.client.get_node_from_key(key)
            if node is None:  # not for a primary (only a replica lookup may answer None)
                raise Unavailable(f"redis cluster has no node for key {key!r}")
            groups.setdefault(node.name, (node, []))[1].append(pos)
        if self._down:
            now = time.monotonic()
            for name in groups:
                if self._down.get(name, 0.0) > now:
                    self.refresh()  # at most once per refresh_s: finds the promoted replica
                    raise Unavailable(f"redis cluster node {name} is down (failing over?)")
        replies: list[Any] = [None] * len(commands)
        redirected: list[int] = []
        for name, (node, positions) in groups.items():
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for pos in positions:
                command, key, args, kwargs = commands[pos]
                getattr(pipe, command)(key, *args, **kwargs)
            try:
                answers = pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError):
                self._down[name] = time.monotonic() + self.down_s
                self.refresh()
                raise
            self._down.pop(name, None)
            for pos, reply in zip(positions, answers, strict=True):
                if isinstance(reply, (MovedError, AskError)):
                    redirected.append(pos)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[pos] = reply
        if redirected:
            self.refresh()
            if not self.follow_redirects:
                moved = len(redirected)
                raise Unavailable(f"redis cluster slots moved during a bulk write ({moved} keys); retry")
            for pos in redirected:  # redis-py's client follows MOVED and ASK
                command, key, args, kwargs = commands[pos]
                replies[pos] = getattr(self.client, command)(key, *args, **kwargs)
        return replies

    def refresh(self) -> None:
        """Re-read the slot table unless another thread does, or it was re-read under ``refresh_s`` ago."""
        if time.monotonic() - self._refreshed_at < self.refresh_s:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return
        try:
            self._refreshed_at = time.monotonic()
            self.client.nodes_manager.initialize()
            self.refreshes += 1
        except Exception as err:  # the cluster may be half down: the next refresh tries again
            log.info("redis cluster topology re-read failed: %s", err)
        finally:
            self._refresh_lock.release()
