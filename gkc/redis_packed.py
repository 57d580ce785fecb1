"""Several Redis commands in one round trip, packed in C: the read path's non-transactional pipeline.

redis-py's pipeline encodes every argument through Python calls (``Encoder.encode`` per key and field),
which for one ``BatchGet`` of 500 items and a few hundred categories cost ~0.8 ms of GKC's CPU, a
third of all it spent on the request; ``hiredis.pack_command`` packs the same commands in C (~0.3 ms
for the whole round trip; docs/gkc.md, "Read path"). The replies are the same objects the pipeline
returns (raw ``bytes`` / ``None`` lists for ``HMGET`` and ``MGET``), in the order the commands were given.

Failure semantics follow redis-py's pipeline: the client's own :class:`redis.retry.Retry` decides
whether a dropped connection is tried again (GKC: once, at once), and any failure disconnects the
connection before it goes back to the pool, so no reply of this round trip can ever be read by another
request. An error reply (``WRONGTYPE``, ...) raises :class:`redis.exceptions.ResponseError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis


def round_trip(client: Any, commands: Sequence[Sequence[str | bytes]]) -> list[Any]:
    """Send ``commands`` (each ``(NAME, *args)``) on one pooled connection of ``client`` (a standalone
    ``redis.Redis``) as one write and read their replies in order."""
    # (hiredis.pyi types the argument as a 1-tuple: the stub means a tuple of any length)
    packed = [hiredis.pack_command(tuple(command)) for command in commands]  # type: ignore[arg-type]
    pool = client.connection_pool
    conn = pool.get_connection()

    def send_and_read() -> list[Any]:
        conn.send_packed_command(packed)
        return [conn.read_response() for _ in packed]

    try:
        return list(conn.retry.call_with_retry(send_and_read, lambda _error: conn.disconnect()))
    except BaseException:
        conn.disconnect()  # replies of this round trip may still be on the wire
        raise
    finally:
        pool.release(conn)
