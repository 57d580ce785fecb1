"""Redis (single node or Cluster) implementation of the store protocols of :mod:`gkc.store`.

Data keys (the registry's are in :mod:`gkc.redis_registry`; docs/gkc.md has the long form)::

    <ns>u:<user_id>     hash    field "u" -> K̂_u, field "c:<category_id>" -> K̂_uc
    <ns>i:<item_id>     string  K̂_i
    <ns>keys            list    the version's key log: per write batch one element, a JSON list of the
                                batch's keys without the namespace ("u:<id>" / "i:<id>")

where ``<ns>`` = ``gkc:v<number>.<publish id prefix>:`` is the version's namespace: unique per publish, so
a reused number (after Redis lost its data) or a leftover key can never be read as another version's.
Values are the stored rows of the version's dtype (:mod:`contract.quantize`). A user's K̂_u and all
their K̂_uc live in one hash, hence one slot: one HMGET answers the user side of a request. Items spread
over the cluster; a pipeline groups their GETs by node, so a request costs one round trip per node.

The key log makes deletion proportional to the version: :meth:`RedisStore.delete_namespace` reads the
version's own keys from it (a batch at a time) and UNLINKs them, never scanning the keyspace. Every
write batch appends its keys to the log *before* writing them, so the log covers every key a write may
have created (a key listed but never written costs an UNLINK of nothing). It costs about the ids' bytes
(+5 per key) in Redis.

Every call runs inside :func:`gkc.redis_registry.guard` (Redis failures → domain errors by type).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from gkc import redis_packed
from gkc.cluster_route import Command, NodeRouter
from gkc.redis_keys import KEYLOG, USER_FIELD, item_key, keylog_key, uc_field, user_key
from gkc.redis_registry import RedisRegistry, guard, namespace
from gkc.redis_version_keys import VersionKeyReads
from gkc.store import MemoryInfo, RawRead
from services.errors import Unavailable


class RedisStore(VersionKeyReads, RedisRegistry):
    """Thread-safe (redis-py pools connections). ``cluster=True`` uses redis-py's RedisCluster.

    The registry methods (:class:`gkc.store.VersionRegistry`) are :class:`RedisRegistry`'s."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        timeout_s: float = 0.5,
        bulk_timeout_s: float = 10.0,
        node_pipelines: bool = True,
    ) -> None:
        self.url = url
        self.cluster = cluster
        #: Cluster bulk writes and deletions as one plain pipeline per node (:meth:`_by_node`); False:
        #: redis-py's cluster pipeline (routes every command itself; ``keep bench publish --cluster``
        #: measures both).
        self.node_pipelines = node_pipelines
        self.client: Any = self._connect(timeout_s)
        self._bulk_timeout_s = max(timeout_s, bulk_timeout_s)
        self._bulk: Any = None
        self._bulk_lock = threading.Lock()
        self._bulk_router: NodeRouter | None = None
        #: Cluster reads: per-node pipelines with a breaker (:mod:`gkc.cluster_route`)
        self.cluster_reads = NodeRouter(self.client, follow_redirects=True) if cluster else None
        super().__init__(self.client)

    def _connect(self, timeout_s: float) -> Any:
        opts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        # A dropped connection (a restarted Redis, a failover) is retried once at once, a timeout never:
        # a stuck node then costs one timeout, not seconds of retries and backoff.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if self.cluster:
            return RedisCluster.from_url(self.url, retry=retry, **opts)
        return redis.Redis.from_url(self.url, retry=retry, **opts)

    @property
    def bulk(self) -> Any:
        """The client of bulk writes and deletions (made on first use): its socket timeout is
        ``bulk_timeout_s``, since a batch of thousands of entries may take longer than a read's
        timeout on a busy Redis, and a publish is not latency-bound."""
        with self._bulk_lock:
            if self._bulk is None:
                self._bulk = self._connect(self._bulk_timeout_s)
            return self._bulk

    # --- reads ----------------------------------------------------------------------------------
    def read(
        self,
        ns: str,
        user_id: str,
        category_ids: Sequence[str],
        item_ids: Sequence[str],
        fallback: str | None = None,
    ) -> RawRead:
        """One round trip. With ``fallback`` (a delta's base namespace) the same keys are asked of both
        namespaces in the same pipeline and each entry is the delta's where it has one, else the base's."""
        fields = [USER_FIELD, *[f"c:{c}" for c in category_ids]]
        layers = (ns,) if fallback is None else (ns, fallback)
        with guard():
            if self.cluster_reads is not None:
                replies = self.cluster_reads.run(_read_commands(layers, user_id, fields, item_ids))
            else:  # one round trip, packed in C (gkc.redis_packed); without items: the HMGETs alone
                commands = [("HMGET", user_key(layer, user_id), *fields) for layer in layers]
                if item_ids:
                    commands += [("MGET", *[item_key(layer, i) for i in item_ids]) for layer in layers]
                replies = redis_packed.round_trip(self.client, commands)
        user_side = replies[0]
        if self.cluster:
            items = replies[len(layers) : len(layers) + len(item_ids)]
        else:
            items = replies[len(layers)] if item_ids else []
        if fallback is not None:
            user_side = _first(user_side, replies[1])
            if item_ids:
                base_items = replies[2 + len(item_ids) :] if self.cluster else replies[3]
                items = _first(items, base_items)
        return RawRead(user=user_side[0], ucs=list(user_side[1:]), items=list(items))

    def ping(self) -> None:
        """Every primary answers (a cluster with a primary down cannot answer every request)."""
        with guard():
            if self.cluster:
                self.client.ping(target_nodes=RedisCluster.PRIMARIES)
                # Primaries that answer PING are not enough: once a master and its replicas are gone
                # the client may drop it from its topology, while the slots it held have no owner.
                infos = self.client.cluster_info(target_nodes=RedisCluster.PRIMARIES)
                states = [infos] if "cluster_state" in infos else list(infos.values())
                if any(info.get("cluster_state") != "ok" for info in states):
                    raise Unavailable("redis unavailable: the cluster is down (cluster_state fail)")
            else:
                self.client.ping()

    # --- bulk data ------------------------------------------------------------------------------
    def _by_node(
        self, commands: Sequence[tuple[str, str | bytes, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        """Run ``(command, key, args, kwargs)`` on a Cluster grouped by the primary that owns each key's
        slot: one plain pipeline per node on that node's own connection, so no command pays redis-py's
        per-command cluster routing (the cluster pipeline's cost). Replies come back in the order given.

        A ``MOVED`` / ``ASK`` reply (slots moving: a resharding or failover) makes the client re-read the
        topology and the batch fails with :class:`Unavailable`: the publish then retries on a fresh
        version (a half-applied batch would fail its count check anyway)."""
        if not self.node_pipelines:
            cluster_pipe = self.bulk.pipeline(transaction=False)
            for name, key, args, kwargs in commands:
                getattr(cluster_pipe, name)(key, *args, **kwargs)
            return list(cluster_pipe.execute())
        client = self.bulk
        with self._bulk_lock:
            if self._bulk_router is None:
                self._bulk_router = NodeRouter(client, follow_redirects=False)
        return self._bulk_router.run(commands)

    def _log_keys(self, ns: str, kind: str, ids: Sequence[str]) -> None:
        """Append a batch's keys to the version's key log (before they are written)."""
        if ids:
            self.bulk.rpush(keylog_key(ns), json.dumps([f"{kind}:{i}" for i in ids], ensure_ascii=False))

    def write_user_vectors(self, ns: str, user_ids: np.ndarray, vectors: np.ndarray) -> int:
        ids = user_ids.tolist()
        values = _row_bytes(vectors)
        with guard():
            self._log_keys(ns, "u", ids)
            if self.cluster:
                commands = [
                    ("hset", user_key(ns, uid), (USER_FIELD, value), dict[str, Any]())
                    for uid, value in zip(ids, values, strict=True)
                ]
                return int(sum(int(r) for r in self._by_node(commands)))
            pipe = self.bulk.pipeline(transaction=False)
            for uid, value in zip(ids, values, strict=True):
                pipe.hset(user_key(ns, uid), USER_FIELD, value)
            return int(sum(int(r) for r in pipe.execute()))

    def write_uc_vectors(
        self, ns: str, user_ids: np.ndarray, category_ids: np.ndarray, vectors: np.ndarray
    ) -> int:
        """One multi-field ``HSET`` per user of the batch (K̂_uc of a user share its hash): ~50x fewer
        commands than one per entry; HSET answers how many fields were new."""
        fields: dict[str, list[Any]] = {}
        for uid, cid, value in zip(
            user_ids.tolist(), category_ids.tolist(), _row_bytes(vectors), strict=True
        ):
            fields.setdefault(uid, []).extend((f"c:{cid}", value))
        with guard():
            self._log_keys(ns, "u", list(fields))
            if self.cluster:
                commands = [("hset", user_key(ns, u), (), {"items": items}) for u, items in fields.items()]
                return int(sum(int(r) for r in self._by_node(commands)))
            pipe = self.bulk.pipeline(transaction=False)
            for uid, items in fields.items():
                pipe.hset(user_key(ns, uid), items=items)
            return int(sum(int(r) for r in pipe.execute()))

    def write_items(self, ns: str, item_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Single node: one ``MSETNX`` per batch (all keys new, or none written: the publisher's count
        check then fails); Cluster: ``SET NX`` per key (MSETNX needs one slot)."""
        ids = item_ids.tolist()
        values = _row_bytes(vectors)
        with guard():
            self._log_keys(ns, "i", ids)
            if not self.cluster:
                if not ids:
                    return 0
                created = self.bulk.msetnx({item_key(ns, i): v for i, v in zip(ids, values, strict=True)})
                return len(ids) if created else 0
            commands = [
                ("set", item_key(ns, i), (value,), {"nx": True}) for i, value in zip(ids, values, strict=True)
            ]
            return sum(1 for r in self._by_node(commands) if r)

    def has_entries(self, ns: str, block: str, ids: Sequence[tuple[str, ...]]) -> int:
        with guard():
            pipe = self.bulk.pipeline(transaction=False)
            for key in ids:
                if block == "users":
                    pipe.hexists(user_key(ns, key[0]), USER_FIELD)
                elif block == "ucs":
                    pipe.hexists(user_key(ns, key[0]), uc_field(key[1]))
                else:
                    pipe.exists(item_key(ns, key[0]))
            return sum(1 for r in pipe.execute() if r)

    def delete_namespace(self, ns: str, batch: int = 1000, *, scan: bool = False) -> int:
        """UNLINK the keys the version's key log names, one logged write batch at a time (popped only
        once its keys are gone, so an interrupted deletion resumes), then the log. ``scan=True`` also
        sweeps ``SCAN MATCH <ns>*`` afterwards: for orphans found by a scan and versions published
        before key logs existed."""
        removed = 0
        log = keylog_key(ns)
        prefix = ns.encode()
        with guard():
            while chunks := self.bulk.lrange(log, 0, 0):
                keys = [prefix + suffix.encode() for suffix in json.loads(chunks[0])]
                for start in range(0, len(keys), batch):
                    removed += self._unlink(keys[start : start + batch])
                self.bulk.lpop(log)
            self.bulk.unlink(log)
            if scan:
                removed += self._scan_unlink(ns, batch)
        return removed

    def _scan_unlink(self, ns: str, batch: int) -> int:
        removed = 0
        with guard():
            chunk: list[bytes] = []
            for key in self.bulk.scan_iter(match=ns + "*", count=batch):
                chunk.append(key)
                if len(chunk) >= batch:
                    removed += self._unlink(chunk)
                    chunk = []
            if chunk:
                removed += self._unlink(chunk)
        return removed

    def _unlink(self, keys: list[bytes]) -> int:
        if not self.cluster:
            return int(self.bulk.unlink(*keys))
        return int(sum(int(r) for r in self._by_node([("unlink", k, (), {}) for k in keys])))

    def count_keys(self, namespaces: Sequence[str] | None = None, batch: int = 1000) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(namespaces or (), 0)
        with guard():
            for key in self.client.scan_iter(match="gkc:v*", count=batch):
                text = key.decode(errors="replace")
                ns = text[: text.find(":", 4) + 1]
                if text[len(ns) :] == KEYLOG:  # the key log is not one of the version's entries
                    if namespaces is None:
                        counts.setdefault(ns, 0)
                    continue
                if namespaces is None:
                    counts[ns] = counts.get(ns, 0) + 1
                elif ns in counts:
                    counts[ns] += 1
        return counts

    # --- memory and replication -----------------------------------------------------------------
    def _per_primary(self, section: str) -> list[dict[str, Any]]:
        if not self.cluster:
            return [self.client.info(section)]
        replies = self.client.info(section, target_nodes=RedisCluster.PRIMARIES)
        if replies and all(isinstance(v, dict) for v in replies.values()) and "used_memory" not in replies:
            return list(replies.values())
        return [replies]

    def memory(self) -> MemoryInfo:
        with guard():
            mem = self._per_primary("memory")
            stats = self._per_primary("stats")
        policies = {str(m.get("maxmemory_policy", "unknown")) for m in mem}
        worst = "noeviction" if policies == {"noeviction"} else sorted(policies - {"noeviction"})[0]
        limited = [int(m.get("maxmemory", 0)) for m in mem]
        return MemoryInfo(
            used_bytes=sum(int(m.get("used_memory", 0)) for m in mem),
            # one node without a limit: the cluster has none the sum could tell
            max_bytes=sum(limited) if all(limited) else 0,
            policy=worst,
            evicted_keys=sum(int(s.get("evicted_keys", 0)) for s in stats),
            system_bytes=max(int(m.get("total_system_memory", 0)) for m in mem),
        )

    def wait_replicated(self, timeout_s: float) -> None:
        """Poll every primary's replication offsets until each online replica has caught up."""
        deadline = time.monotonic() + timeout_s
        with guard():
            wanted = [int(info.get("master_repl_offset", 0)) for info in self._per_primary("replication")]
            while True:
                infos = self._per_primary("replication")
                behind = [
                    i
                    for i, (want, info) in enumerate(zip(wanted, infos, strict=False))
                    if any(offset < want for offset in _replica_offsets(info))
                ]
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"{len(behind)} primaries' replicas did not catch up within {timeout_s} s"
                    )
                time.sleep(0.02)

    def close(self) -> None:
        self.client.close()
        if self._bulk is not None:
            self._bulk.close()


def _row_bytes(rows: np.ndarray) -> list[bytes]:
    """Each row's bytes, by slicing one buffer (much cheaper than ``row.tobytes()`` per row)."""
    if not len(rows):
        return []
    blob = np.ascontiguousarray(rows).tobytes()
    width = len(blob) // len(rows)
    return [blob[i : i + width] for i in range(0, len(blob), width)]


def _read_commands(
    layers: Sequence[str], user_id: str, fields: list[str], item_ids: Sequence[str]
) -> list[Command]:
    """A request's reads on a cluster: per layer the user's hash, then per layer each item's key."""
    commands: list[Command] = [("hmget", user_key(layer, user_id), (fields,), {}) for layer in layers]
    for layer in layers:
        commands.extend(("get", item_key(layer, i), (), {}) for i in item_ids)
    return commands


def _first(mine: list[Any], base: list[Any]) -> list[Any]:
    """Per position the delta's value, the base's where the delta has none."""
    return [b if m is None else m for m, b in zip(mine, base, strict=True)]


def _replica_offsets(info: dict[str, Any]) -> list[int]:
    out = []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online":
            out.append(int(value.get("offset", 0)))
    return out


__all__ = [
    "KEYLOG",
    "USER_FIELD",
    "RedisStore",
    "guard",
    "item_key",
    "keylog_key",
    "namespace",
    "uc_field",
    "user_key",
]
