"""Redis (single node or Cluster) implementation of :class:`gkc.store.KnowledgeStore`.

Key schema (docs/gkc.md has the long form)::

    gkc:{reg}:next                 string  last allocated version number (INCR)
    gkc:{reg}:state                hash    version -> staging | ready | retiring
    gkc:{reg}:manifest             hash    version -> manifest JSON
    gkc:{reg}:updated              hash    version -> unix time of the last heartbeat / state change
    gkc:{reg}:active               string  the active version
    gkc:v<V>:u:<user_id>           hash    field "u" -> K̂_u, field "c:<category_id>" -> K̂_uc
    gkc:v<V>:i:<item_id>           string  K̂_i

Values are raw little-endian float32 bytes. The registry keys share the hash tag ``{reg}`` so that the
Lua scripts that change state run atomically on one node, in Cluster too. A user's K̂_u and all their
K̂_uc live in one hash, hence one slot: one HMGET answers the user side of a request. Items spread over
the cluster; a pipeline groups their GETs by node, so a request costs one round trip per node.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gkc.store import READY, RETIRING, STAGING, RawRead, VersionRecord
from services.errors import Conflict, KeepError, NotFound, Unavailable

REG = "gkc:{reg}:"
K_NEXT, K_STATE, K_MANIFEST, K_UPDATED, K_ACTIVE = (
    REG + s for s in ("next", "state", "manifest", "updated", "active")
)
REG_KEYS = [K_STATE, K_ACTIVE, K_UPDATED]


def version_prefix(version: int) -> str:
    return f"gkc:v{version}:"


def user_key(version: int, user_id: str) -> str:
    return f"gkc:v{version}:u:{user_id}"


def item_key(version: int, item_id: str) -> str:
    return f"gkc:v{version}:i:{item_id}"


USER_FIELD = "u"


def uc_field(category_id: str) -> str:
    return f"c:{category_id}"


# KEYS = state, active, updated; ARGV = version, max_ready, now
_FINISH = """
local st = redis.call('HGET', KEYS[1], ARGV[1])
if st ~= 'staging' then return {-1} end
redis.call('HSET', KEYS[1], ARGV[1], 'ready')
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local active = redis.call('GET', KEYS[2])
if not active then redis.call('SET', KEYS[2], ARGV[1]); active = ARGV[1] end
local all = redis.call('HGETALL', KEYS[1])
local ready = {}
for i = 1, #all, 2 do if all[i + 1] == 'ready' then table.insert(ready, tonumber(all[i])) end end
table.sort(ready)
local n = #ready
local retired = {}
for _, v in ipairs(ready) do
  if n <= tonumber(ARGV[2]) then break end
  if tostring(v) ~= active then
    redis.call('HSET', KEYS[1], tostring(v), 'retiring')
    redis.call('HSET', KEYS[3], tostring(v), ARGV[3])
    table.insert(retired, v)
    n = n - 1
  end
end
return retired
"""

# KEYS = state, active, updated; ARGV = version, now
_ACTIVATE = """
local st = redis.call('HGET', KEYS[1], ARGV[1])
if not st then return 'missing' end
if st ~= 'ready' then return st end
redis.call('SET', KEYS[2], ARGV[1])
return 'ok'
"""

_RETIRE = """
local st = redis.call('HGET', KEYS[1], ARGV[1])
if not st then return 'missing' end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'active' end
redis.call('HSET', KEYS[1], ARGV[1], 'retiring')
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 'ok'
"""

# ARGV = cutoff, now
_ABANDON = """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if all[i + 1] == 'staging' then
    local ts = tonumber(redis.call('HGET', KEYS[3], all[i]) or '0')
    if ts < tonumber(ARGV[1]) then
      redis.call('HSET', KEYS[1], all[i], 'retiring')
      redis.call('HSET', KEYS[3], all[i], ARGV[2])
      table.insert(out, tonumber(all[i]))
    end
  end
end
return out
"""

_DOWN = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Redis transport failures become Unavailable (retryable); protocol errors stay internal."""
    try:
        yield
    except KeepError:
        raise
    except _DOWN as err:
        raise Unavailable(f"redis unavailable: {type(err).__name__}: {err}") from err
    except ResponseError as err:
        if "CLUSTERDOWN" in str(err) or "LOADING" in str(err) or "TRYAGAIN" in str(err):
            raise Unavailable(f"redis unavailable: {err}") from err
        raise


class RedisStore:
    """Thread-safe (redis-py pools connections). ``cluster=True`` uses redis-py's RedisCluster."""

    def __init__(self, url: str, *, cluster: bool = False, timeout_s: float = 0.5) -> None:
        self.url = url
        self.cluster = cluster
        opts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        self.client: Any
        if cluster:
            self.client = RedisCluster.from_url(url, **opts)
        else:
            self.client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **opts)
        self._finish = self.client.register_script(_FINISH)
        self._activate = self.client.register_script(_ACTIVATE)
        self._retire = self.client.register_script(_RETIRE)
        self._abandon = self.client.register_script(_ABANDON)

    # --- reads ----------------------------------------------------------------------------------
    def read(
        self, version: int, user_id: str, category_ids: Sequence[str], item_ids: Sequence[str]
    ) -> RawRead:
        fields = [USER_FIELD, *[f"c:{c}" for c in category_ids]]
        prefix = f"gkc:v{version}:i:"
        keys = [prefix + i for i in item_ids]
        with _guard():
            if not keys:  # every item came from the cache: one plain command, no pipeline overhead
                user_side = self.client.hmget(user_key(version, user_id), fields)
                return RawRead(user=user_side[0], ucs=user_side[1:], items=[])
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(user_key(version, user_id), fields)
            if self.cluster:
                for key in keys:
                    pipe.get(key)
                replies = pipe.execute()
                items = replies[1:]
            else:
                pipe.mget(keys)
                replies = pipe.execute()
                items = replies[1]
        user_side = replies[0]
        return RawRead(user=user_side[0], ucs=user_side[1:], items=items)

    # --- registry -------------------------------------------------------------------------------
    def versions(self) -> tuple[list[VersionRecord], int | None]:
        with _guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(K_STATE)
            pipe.hgetall(K_MANIFEST)
            pipe.hgetall(K_UPDATED)
            pipe.get(K_ACTIVE)
            states, manifests, updated, active = pipe.execute()
        records = [
            VersionRecord(
                version=int(v),
                state=s.decode(),
                manifest=json.loads(manifests.get(v, b"{}")),
                updated=float(updated.get(v, b"0")),
            )
            for v, s in states.items()
        ]
        records.sort(key=lambda r: r.version)
        return records, int(active) if active is not None else None

    def begin(self, manifest: dict[str, Any]) -> int:
        with _guard():
            version = int(self.client.incr(K_NEXT))
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(K_MANIFEST, str(version), json.dumps(manifest, sort_keys=True))
            pipe.hset(K_UPDATED, str(version), repr(time.time()))
            pipe.hset(K_STATE, str(version), STAGING)
            pipe.execute()
        return version

    def heartbeat(self, version: int) -> None:
        with _guard():
            self.client.hset(K_UPDATED, str(version), repr(time.time()))

    def finish(self, version: int, max_ready: int) -> list[int]:
        with _guard():
            result = self._finish(keys=REG_KEYS, args=[version, max_ready, repr(time.time())])
        if result == [-1]:
            raise Conflict(f"version {version} is no longer staging (abandoned?); publish again")
        return [int(v) for v in result]

    def activate(self, version: int) -> None:
        with _guard():
            result = self._activate(keys=REG_KEYS, args=[version, repr(time.time())]).decode()
        if result == "missing":
            raise NotFound(f"version {version} does not exist")
        if result != "ok":
            raise Conflict(f"version {version} is {result}; only a ready version can be activated")

    def retire(self, version: int) -> None:
        with _guard():
            result = self._retire(keys=REG_KEYS, args=[version, repr(time.time())]).decode()
        if result == "missing":
            raise NotFound(f"version {version} does not exist")
        if result == "active":
            raise Conflict(f"version {version} is active; activate another version before deleting it")

    def abandon_stale(self, lease_s: float) -> list[int]:
        now = time.time()
        with _guard():
            result = self._abandon(keys=REG_KEYS, args=[repr(now - lease_s), repr(now)])
        return [int(v) for v in result]

    def forget(self, version: int) -> None:
        v = str(version)
        with _guard():
            state = self.client.hget(K_STATE, v)
            if state is not None and state.decode() != RETIRING:
                raise Conflict(f"version {version} is {state.decode()}, not retiring")
            pipe = self.client.pipeline(transaction=False)
            for key in (K_STATE, K_MANIFEST, K_UPDATED):
                pipe.hdel(key, v)
            pipe.execute()

    # --- bulk data ------------------------------------------------------------------------------
    def write_users(
        self,
        version: int,
        user_ids: np.ndarray,
        user_vectors: np.ndarray | None,
        category_ids: np.ndarray | None,
        uc_vectors: np.ndarray | None,
    ) -> int:
        with _guard():
            pipe = self.client.pipeline(transaction=False)
            if category_ids is None:
                assert user_vectors is not None
                for uid, vec in zip(user_ids.tolist(), user_vectors, strict=True):
                    pipe.hset(user_key(version, uid), USER_FIELD, vec.tobytes())
            else:
                assert uc_vectors is not None
                for uid, cid, vec in zip(user_ids.tolist(), category_ids.tolist(), uc_vectors, strict=True):
                    pipe.hset(user_key(version, uid), uc_field(cid), vec.tobytes())
            return int(sum(int(r) for r in pipe.execute()))

    def write_items(self, version: int, item_ids: np.ndarray, vectors: np.ndarray) -> int:
        with _guard():
            pipe = self.client.pipeline(transaction=False)
            for iid, vec in zip(item_ids.tolist(), vectors, strict=True):
                pipe.set(item_key(version, iid), vec.tobytes(), nx=True)
            return sum(1 for r in pipe.execute() if r)

    def delete_version_data(self, version: int, batch: int = 1000) -> int:
        removed = 0
        pattern = version_prefix(version) + "*"
        with _guard():
            chunk: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=batch):
                chunk.append(key)
                if len(chunk) >= batch:
                    removed += self._unlink(chunk)
                    chunk = []
            if chunk:
                removed += self._unlink(chunk)
        return removed

    def _unlink(self, keys: list[bytes]) -> int:
        if not self.cluster:
            return int(self.client.unlink(*keys))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return int(sum(int(r) for r in pipe.execute()))

    def ping(self) -> None:
        with _guard():
            self.client.ping()

    def close(self) -> None:
        self.client.close()


__all__ = ["READY", "RedisStore", "item_key", "user_key", "version_prefix"]
