"""Deletion proportional to the version (issue 13, deliver 4): a version's keys are enumerated from its
own key log, never by scanning the keyspace. Watched with Redis' own ``MONITOR`` (every command the
server executed, whoever sent it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from gkc import bundle as gkc_bundle
from gkc.janitor import Janitor
from gkc.local_redis import EmbeddedRedis
from gkc.publish import publish
from gkc.redis_store import RedisStore, keylog_key
from gkc.store import READY

STOP = "keep-test-monitor-stop"


class Monitor:
    """Every command the Redis server runs while the context is open (``MONITOR`` on its own connection)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.commands: list[list[str]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.client.monitor() as m:
            self._ready.set()
            for event in m.listen():
                words = [w.strip('"') for w in str(event["command"]).split(" ")]
                if STOP in words:
                    return
                self.commands.append(words)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        self.client.echo("keep-test-monitor-started")  # MONITOR is live once this round trip is back
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(STOP)
        self._thread.join(10)

    def keys_of(self, command: str) -> list[str]:
        return [k for words in self.commands if words[0].lower() == command for k in words[1:]]

    def count(self, command: str) -> int:
        return sum(1 for words in self.commands if words[0].lower() == command)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    srv = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    yield srv.url
    srv.stop()


def _namespace(store: RedisStore, version: int) -> str:
    return next(r.namespace for r in store.records()[0] if r.version == version)


def test_deleting_a_version_visits_only_its_own_keys(
    server: str, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """Two versions of very different sizes; deleting the small one UNLINKs exactly its keys (and its
    key log), runs no SCAN and leaves the big one whole; then the big one goes the same way."""
    store = RedisStore(server)
    small = gkc_bundle.load(make_bundle(tmp_path / "small", seed=1, users=6, items=9, categories=4))
    big = gkc_bundle.load(make_bundle(tmp_path / "big", seed=2, users=300, items=2000, categories=10))
    v_small = publish(store, small, batch=4, progress=False).version
    v_big = publish(store, big, batch=500, progress=False).version
    store.activate(v_big)
    ns_small, ns_big = _namespace(store, v_small), _namespace(store, v_big)
    counts = store.count_keys([ns_small, ns_big])
    assert counts == {ns_small: 6 + 9, ns_big: 300 + 2000}  # the key logs are not counted as entries
    janitor = Janitor(store, lease_s=60.0, delete_after_s=0.0, batch=5)
    janitor.run_once()  # the start-up orphan sweep (a scan by nature) happens here, not below

    store.retire(v_small, "test")
    with Monitor(server) as mon:
        assert janitor.run_once() == [v_small]
    unlinked = mon.keys_of("unlink")
    assert mon.count("scan") == 0 and mon.count("keys") == 0
    assert all(k.startswith(ns_small) for k in unlinked)
    assert set(unlinked) == {
        *(ns_small + f"u:{u}" for u in small.user_ids),
        *(ns_small + f"i:{i}" for i in small.item_ids),
        keylog_key(ns_small),
    }
    # the small version's keys and nothing more: visits grow with its size, not with the keyspace
    assert len(unlinked) <= 2 * (6 + 9) + 1 < 300 + 2000
    assert store.count_keys([ns_small, ns_big]) == {ns_small: 0, ns_big: 2300}
    assert [r.version for r in store.records()[0] if r.state == READY] == [v_big]

    v_other = publish(store, small, progress=False).version
    store.activate(v_other)
    store.retire(v_big, "test")
    with Monitor(server) as mon:
        assert janitor.run_once() == [v_big]
    assert mon.count("scan") == 0
    assert {k for k in mon.keys_of("unlink")} >= {ns_big + f"i:{i}" for i in big.item_ids}
    assert all(k.startswith(ns_big) for k in mon.keys_of("unlink"))
    assert not redis.Redis.from_url(server).exists(keylog_key(ns_big))
    store.close()


def test_a_version_without_a_key_log_is_still_deleted_by_a_scan(
    server: str, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """Versions published before key logs existed (their record says so) fall back to SCAN + UNLINK."""
    store = RedisStore(server)
    bundle = gkc_bundle.load(make_bundle(tmp_path / "b", seed=3, users=20, items=30))
    keep = publish(store, bundle, progress=False).version
    old = publish(store, bundle, progress=False).version
    ns_old = _namespace(store, old)
    raw = redis.Redis.from_url(server)
    raw.delete(keylog_key(ns_old))  # as if it had been published by the code before key logs
    record = raw.hget("gkc:{reg}:record", str(old))
    assert isinstance(record, bytes)
    raw.hset("gkc:{reg}:record", str(old), record.replace(b'"keylog": true', b'"keylog": false'))
    assert not next(r for r in store.records()[0] if r.version == old).keylog
    store.retire(old, "test")
    Janitor(store, lease_s=60.0, delete_after_s=0.0).run_once()
    assert store.count_keys([ns_old]) == {ns_old: 0}
    assert keep in [r.version for r in store.records()[0]]
    store.close()
