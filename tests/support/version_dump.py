"""What a version holds in Redis, read key by key (tests compare two versions' bytes with it)."""

from __future__ import annotations

from gkc.redis_store import RedisStore


def dump(store: RedisStore, version: int) -> dict[bytes, object]:
    """Every key of a version (without its namespace) and its value: hash fields or bytes; ``{}`` for
    a version the registry does not hold."""
    records, _ = store.records()
    prefix = next((r.namespace for r in records if r.version == version), "gone:").encode()
    out: dict[bytes, object] = {}
    for key in store.client.scan_iter(match=prefix + b"*", count=1000):
        if key == prefix + b"keys":  # the version's key log (its order depends on the writers)
            continue
        kind = store.client.type(key)
        out[key[len(prefix) :]] = store.client.hgetall(key) if kind == b"hash" else store.client.get(key)
    return out
