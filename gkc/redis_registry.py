"""The version registry in Redis (:class:`gkc.store.VersionRegistry`): a few hashes under one hash tag,
changed only by Lua scripts, so every state change is atomic, in Cluster too.

Keys (all share the hash tag ``{reg}``, hence one slot)::

    gkc:{reg}:next       string  the last number handed out (INCR; raised to the caller's floor)
    gkc:{reg}:epoch      string  random id drawn when the registry is created (changes after data loss)
    gkc:{reg}:state      hash    number -> staging | ready | retiring | damaged
    gkc:{reg}:record     hash    number -> JSON {publish_id, checksum, dims, dtype, keylog, keys,
                                   entries, bytes, sample, base (a delta's base identity)}
    gkc:{reg}:manifest   hash    number -> the bundle manifest JSON
    gkc:{reg}:updated    hash    number -> registry time of the last heartbeat / state change
    gkc:{reg}:reason     hash    number -> why it is damaged / retiring
    gkc:{reg}:active     string  the active number
    gkc:{reg}:pins       hash    "<number>|<holder>" -> pin JSON
    gkc:{reg}:pinexp     hash    "<number>|<holder>" -> registry time the lease expires

Times come from Redis ``TIME``, so every process (and the two-phase deletion) uses one clock.

Every script starts with ``DEL gkc:{reg}:scratch``: a write that is allowed when Redis is out of memory
(``noeviction`` refuses only commands that may grow memory). A script that has already written may
finish (Redis cannot stop it half-way), so registry changes (DELETE, activate, retire, abandon) keep
working when Redis is full, while bulk data writes are refused.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import redis.exceptions
from redis.exceptions import ClusterError, ReadOnlyError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract.knowledge import Dims
from gkc import redis_scripts as lua
from gkc.store import READY, IdentityMismatch, Pin, RegistryView, Staging, VersionIdentity, VersionRecord
from services.errors import Conflict, InsufficientStorage, KeepError, NotFound, Unavailable

REG = "gkc:{reg}:"
K_SCRATCH, K_NEXT, K_EPOCH, K_STATE, K_RECORD, K_MANIFEST, K_UPDATED, K_REASON, K_ACTIVE = (
    REG + s
    for s in ("scratch", "next", "epoch", "state", "record", "manifest", "updated", "reason", "active")
)
K_PINS, K_PINEXP = REG + "pins", REG + "pinexp"
ALL_HASHES = (K_STATE, K_RECORD, K_MANIFEST, K_UPDATED, K_REASON)


#: redis-py's "OOM" reply (4.4+; the types-redis stubs lag behind it).
OutOfMemoryError: type[Exception] = getattr(redis.exceptions, "OutOfMemoryError")  # noqa: B009

#: Redis cannot answer now but may soon (transport failure, cluster down or failing over, a loading or
#: read-only node): retryable. Told apart by exception type, never by message text.
_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,
    OSError,
)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Redis failures → :class:`Unavailable` (retryable) or :class:`InsufficientStorage` (out of memory);
    other protocol errors stay internal."""
    try:
        yield
    except KeepError:
        raise
    except _DOWN as err:
        raise Unavailable(f"redis unavailable: {type(err).__name__}: {err}") from err
    except OutOfMemoryError as err:
        raise InsufficientStorage(f"redis is out of memory: {err}") from err


def namespace(number: int, publish_id: str) -> str:
    """Where a version's keys live: unique per identity, so no two publishes ever share a key."""
    return f"gkc:v{number}.{publish_id[:8]}:"


def _record(number: int, state: str, raw: bytes, **extra: Any) -> VersionRecord:
    data = json.loads(raw)
    identity = VersionIdentity(number, data["publish_id"], data["checksum"])
    return VersionRecord(
        identity=identity,
        state=state,
        namespace=namespace(number, identity.publish_id),
        dims=Dims(**data["dims"]),
        keys=int(data.get("keys", 0)),
        sample=data.get("sample", {}),
        dtype=str(data.get("dtype", "float32")),
        keylog=bool(data.get("keylog", False)),
        entries=int(data.get("entries", 0)),
        size_bytes=int(data.get("bytes", 0)),
        base=VersionIdentity.from_json(data["base"]) if data.get("base") else None,
        **extra,
    )


def _record_json(
    publish_id: str,
    checksum: str,
    dims: Dims,
    keys: int = 0,
    sample: Any = None,
    dtype: str = "float32",
    keylog: bool = True,
    entries: int = 0,
    size_bytes: int = 0,
    base: VersionIdentity | None = None,
) -> str:
    body = {"publish_id": publish_id, "checksum": checksum, "dims": vars(dims), "keys": keys}
    body.update(dtype=dtype, keylog=keylog)  # every version begun by this code logs its keys
    if entries:
        body.update(entries=entries, bytes=size_bytes)
    if base is not None:
        body["base"] = base.to_json()
    return json.dumps({**body, "sample": sample or {}}, sort_keys=True)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRegistry:
    """:class:`gkc.store.VersionRegistry` over a redis-py client (single node or Cluster); every call
    runs inside :func:`guard`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        names = ("begin", "heartbeat", "finish", "activate", "retire", "mark", "lost", "abandon")
        sources = (
            lua.BEGIN,
            lua.HEARTBEAT,
            lua.FINISH,
            lua.ACTIVATE,
            lua.RETIRE,
            lua.MARK,
            lua.LOST,
            lua.ABANDON,
        )
        self._scripts = {n: client.register_script(s) for n, s in zip(names, sources, strict=True)}
        for name, src in (
            ("forget", lua.FORGET),
            ("pin", lua.PIN),
            ("expire_pins", lua.EXPIRE_PINS),
            ("epoch", lua.EPOCH),
        ):
            self._scripts[name] = client.register_script(src)
        self._scripts["now"] = client.register_script("return redis.call('TIME')")

    def _run(self, name: str, keys: list[str], *args: Any) -> Any:
        with guard():
            return self._scripts[name](keys=[K_SCRATCH, *keys], args=list(args))

    # --- reads ----------------------------------------------------------------------------------
    def view(self) -> RegistryView:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(K_STATE)
        pipe.hgetall(K_RECORD)
        pipe.get(K_ACTIVE)
        pipe.get(K_EPOCH)
        with guard():
            states, records, active, epoch = pipe.execute()
        ready = tuple(
            _record(int(v), READY, records[v]) for v, s in states.items() if s == b"ready" and v in records
        )
        return RegistryView(
            records=ready,
            active=int(active) if active is not None else None,
            epoch=_s(epoch) if epoch else None,
        )

    def records(self) -> tuple[list[VersionRecord], int | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in (K_STATE, K_RECORD, K_MANIFEST, K_UPDATED, K_REASON, K_PINS, K_PINEXP):
            pipe.hgetall(key)
        pipe.get(K_ACTIVE)
        with guard():
            states, recs, manifests, updated, reasons, pins, _, active = pipe.execute()
        by_version: dict[int, list[Pin]] = {}
        for body in pins.values():
            pin = Pin(**json.loads(body))
            by_version.setdefault(pin.number, []).append(pin)
        out = [
            _record(
                int(v),
                _s(s),
                recs[v],
                manifest=json.loads(manifests.get(v, b"{}")),
                updated=float(updated.get(v, b"0")),
                reason=_s(reasons.get(v, b"")),
                pins=tuple(sorted(by_version.get(int(v), []), key=lambda p: p.holder)),
            )
            for v, s in states.items()
            if v in recs
        ]
        out.sort(key=lambda r: r.version)
        return out, int(active) if active is not None else None

    def now(self) -> float:
        # a script, so that it runs on the registry's node: the clock every registry change used
        with guard():
            seconds, micros = self._scripts["now"](keys=[K_SCRATCH], args=[])
        return float(seconds) + float(micros) / 1e6

    def ensure_epoch(self) -> str:
        return _s(self._run("epoch", [K_EPOCH], secrets.token_hex(8)))

    # --- changes --------------------------------------------------------------------------------
    def begin(self, manifest: dict[str, Any], checksum: str, dims: Dims, floor: int = 0) -> Staging:
        publish_id = secrets.token_hex(8)
        keys = [K_NEXT, K_EPOCH, K_STATE, K_RECORD, K_MANIFEST, K_UPDATED]
        body = json.dumps(manifest, sort_keys=True)
        number = int(
            self._run(
                "begin",
                keys,
                floor,
                _record_json(
                    publish_id,
                    checksum,
                    dims,
                    dtype=str(manifest.get("dtype", "float32")),
                    base=VersionIdentity.from_json(manifest["base"]) if manifest.get("base") else None,
                ),
                body,
                secrets.token_hex(8),
            )
        )
        return Staging(VersionIdentity(number, publish_id, checksum), namespace(number, publish_id))

    def heartbeat(self, number: int) -> None:
        state = _s(self._run("heartbeat", [K_STATE, K_UPDATED], number))
        if state == "missing":  # only a failover that lost the registry's last writes does this
            raise Unavailable(f"version {number} vanished from the registry (a failover?); publish again")
        if state != "ok":
            raise Conflict(
                f"version {number} is {state}, no longer staging (deleted or abandoned); publish again"
            )

    def finish(
        self,
        number: int,
        max_ready: int,
        keys: int,
        sample: dict[str, Any],
        entries: int = 0,
        size_bytes: int = 0,
    ) -> list[int]:
        records, _ = self.records()
        mine = next((r for r in records if r.version == number), None)
        if mine is None:
            raise Unavailable(f"version {number} vanished from the registry (a failover?); publish again")
        body = _record_json(
            mine.identity.publish_id,
            mine.identity.checksum,
            mine.dims,
            keys,
            sample,
            mine.dtype,
            entries=entries,
            size_bytes=size_bytes,
            base=mine.base,
        )
        base = mine.base
        result = [
            _s(x)
            for x in self._run(
                "finish",
                [K_STATE, K_RECORD, K_UPDATED, K_ACTIVE, K_REASON, K_PINEXP],
                number,
                max_ready,
                body,
                "" if base is None else base.number,
                "" if base is None else base.publish_id,
            )
        ]
        if result[0] == "base":
            assert base is not None
            raise Conflict(
                f"version {number} is a delta over {base}, which is {result[1]} now (deleted or replaced "
                "while this delta was written); publish it again over a ready base or publish a full version"
            )
        if result[0] == "state" and result[1] == "missing":
            raise Unavailable(f"version {number} vanished from the registry (a failover?); publish again")
        if result[0] == "state":
            raise Conflict(
                f"version {number} is {result[1]}, no longer staging (deleted or abandoned); publish again"
            )
        if result[0] == "full":
            raise Conflict(self._full_reason(max_ready))
        return [int(v) for v in result[1:]]

    def _full_reason(self, max_ready: int) -> str:
        records, active = self.records()
        pins = [
            f"v{r.version}: {', '.join(p.holder for p in r.pins)}"
            for r in records
            if r.state == READY and r.pins
        ]
        return (
            f"{max_ready} ready versions are kept and none can be retired (active v{active}; pinned "
            f"{'; '.join(pins) or 'none'}); delete one or wait for its pins to end"
        )

    def activate(self, number: int) -> None:
        result = _s(self._run("activate", [K_STATE, K_ACTIVE], number))
        if result == "missing":
            raise NotFound(f"version {number} does not exist")
        if result != "ok":
            raise Conflict(f"version {number} is {result}; only a ready version can be activated")

    def retire(self, number: int, reason: str) -> str:
        keys = [K_STATE, K_ACTIVE, K_UPDATED, K_REASON, K_PINEXP, K_RECORD]
        result = _s(self._run("retire", keys, number, reason))
        if result == "missing":
            raise NotFound(f"version {number} does not exist")
        if result.startswith("base:"):
            raise Conflict(
                f"version {number} is the base of ready delta version {result.removeprefix('base:')}: "
                "delete the delta first (or publish a full version and delete the delta)"
            )
        if result == "active":
            raise Conflict(f"version {number} is active; activate another version before deleting it")
        if result == "pinned":
            records, _ = self.records()
            holders = [p.holder for r in records if r.version == number for p in r.pins]
            raise Conflict(
                f"version {number} is pinned by {', '.join(holders) or 'a consumer'}; it cannot be deleted"
            )
        return result.removeprefix("was:")

    def mark_damaged(self, number: int, reason: str) -> None:
        self._run("mark", [K_STATE, K_UPDATED, K_REASON], number, reason, READY)

    def record_lost(self, identity: VersionIdentity, dims: Dims, reason: str) -> None:
        # what is left of a lost version may lack its key log: its deletion scans
        body = _record_json(identity.publish_id, identity.checksum, dims, keylog=False)
        self._run("lost", [K_STATE, K_RECORD, K_UPDATED, K_REASON, K_NEXT], identity.number, body, reason)

    def abandon_stale(self, lease_s: float) -> list[int]:
        return [int(v) for v in self._run("abandon", [K_STATE, K_UPDATED, K_REASON], lease_s)]

    def forget(self, number: int) -> None:
        result = _s(self._run("forget", [*ALL_HASHES, K_PINS, K_PINEXP], number))
        if result != "ok":
            raise Conflict(f"version {number} is {result}, not retiring")

    def pin(self, number: int, holder: str, ttl_s: float, publish_id: str = "") -> Pin:
        result = self._run("pin", [K_STATE, K_RECORD, K_PINS, K_PINEXP], number, holder, ttl_s, publish_id)
        if _s(result[0]) == "identity":
            raise IdentityMismatch(
                f"version {number} is publish {_s(result[1])}, not {publish_id}: not the knowledge pinned"
            )
        if _s(result[0]) != "ok":
            state = _s(result[1])
            if state == "missing":
                raise NotFound(f"version {number} does not exist")
            raise Conflict(f"version {number} is {state}; only a ready version can be pinned")
        return Pin(**json.loads(result[1]))

    def unpin(self, number: int, holder: str) -> bool:
        field = f"{number}|{holder}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(K_PINS, field)
        pipe.hdel(K_PINEXP, field)
        with guard():
            return bool(pipe.execute()[0])

    def expire_pins(self) -> int:
        return int(self._run("expire_pins", [K_PINS, K_PINEXP]))
