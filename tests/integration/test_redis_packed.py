"""The read path's packed round trip (``gkc.redis_packed``) against a real redis-server: the replies of a
redis-py pipeline, in order; an error reply never leaves a stale reply for the next request; a dropped
connection is tried again once, as the client's retry says."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry

from gkc import redis_packed


@pytest.fixture
def client(module_redis: str) -> redis.Redis:
    c = redis.Redis.from_url(
        module_redis, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    )
    c.flushdb()
    c.hset("ns:u:7", mapping={"u": b"\x00\x01user", "c:3": b"uc-3", "c:9": b"\xffuc-9"})
    c.mset({f"ns:i:{i}": f"item-{i}".encode() for i in range(0, 600, 2)})  # odd items are missing
    c.set("ns:string", b"not a hash")
    return c


def test_replies_are_the_pipelines(client: redis.Redis) -> None:
    fields = ["u", "c:3", "c:4", "c:9"]
    items = [f"ns:i:{i}" for i in range(500)]
    pipe = client.pipeline(transaction=False)
    pipe.hmget("ns:u:7", fields)
    pipe.mget(items)
    pipe.hmget("ns:u:missing", fields)
    want = pipe.execute()
    got = redis_packed.round_trip(
        client, [("HMGET", "ns:u:7", *fields), ("MGET", *items), ("HMGET", "ns:u:missing", *fields)]
    )
    assert got == want
    assert (
        got[0] == [b"\x00\x01user", b"uc-3", None, b"\xffuc-9"]
        and got[1][1] is None
        and got[1][2] == b"item-2"
    )


def test_an_error_reply_leaves_nothing_behind_for_the_next_request(client: redis.Redis) -> None:
    """WRONGTYPE on the first command: the second's reply is still on the wire when the error is raised.
    Read by the next request on a pooled connection, it would be someone else's answer."""
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        redis_packed.round_trip(client, [("HMGET", "ns:string", "u"), ("MGET", "ns:i:0", "ns:i:2")])
    # dropped at once (the pool's own check of a returned connection sees pending data only if it has
    # arrived by then)
    (returned,) = client.connection_pool._available_connections
    assert returned._sock is None
    for _ in range(3):  # the pool has one connection: each round trip below reuses it
        assert redis_packed.round_trip(client, [("HMGET", "ns:u:7", "c:3")]) == [[b"uc-3"]]
    assert len(client.connection_pool._available_connections) <= 1


def test_a_killed_connection_is_not_reused(client: redis.Redis, module_redis: str) -> None:
    assert redis_packed.round_trip(client, [("MGET", "ns:i:4")]) == [[b"item-4"]]  # a pooled connection
    admin = redis.Redis.from_url(module_redis)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # the pooled connection is gone
    assert redis_packed.round_trip(client, [("MGET", "ns:i:6"), ("HMGET", "ns:u:7", "u")]) == [
        [b"item-6"],
        [b"\x00\x01user"],
    ]


@pytest.mark.parametrize("failures", [1, 2])
def test_a_connection_dropped_during_the_round_trip_is_tried_again_once(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """A fault Redis cannot give on demand (the connection dropping between the pool's check and the
    write): the first ``failures`` writes fail. One is tried again (the client's Retry: once); two fail."""
    calls = []
    send = redis.connection.AbstractConnection.send_packed_command  # TCP and unix-socket connections

    def flaky(self: redis.connection.AbstractConnection, command: Any, check_health: bool = True) -> None:
        if b"MGET" not in b"".join(command if isinstance(command, list) else [command]):
            return send(self, command, check_health)  # a reconnect's own handshake
        calls.append(1)
        if len(calls) <= failures:
            raise RedisConnectionError("dropped")
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", flaky)
    if failures == 1:
        assert redis_packed.round_trip(client, [("MGET", "ns:i:8")]) == [[b"item-8"]]
    else:
        with pytest.raises(RedisConnectionError):
            redis_packed.round_trip(client, [("MGET", "ns:i:8")])
    assert len(calls) == 2
