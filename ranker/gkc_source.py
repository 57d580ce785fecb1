"""GKC as the ranker's knowledge source: an asyncio gRPC stub on the server's event loop.

``gkc.client.GkcClient`` is blocking; inside the ranker's grpc.aio server a blocking call would need a
thread per in-flight lookup, so this adapter speaks the same ``BatchGet`` through ``grpc.aio`` and reuses
the wire decoding (:func:`gkc.wire.lookup_from_proto`) and error mapping
(:func:`gkc.client.from_rpc_error`: UNAVAILABLE → ``Unavailable``, NOT_FOUND → ``NotFound``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from grpc import aio

from gkc.client import from_rpc_error, open_channel
from gkc.lookup import Lookup
from gkc.wire import lookup_from_proto
from protos import gkc_pb2, gkc_pb2_grpc


class GkcKnowledgeSource:
    """Create inside the running event loop (``grpc.aio`` channels bind to it).

    TLS as :class:`gkc.client.GkcClient`: ``ca_file`` (PEM) = trust that CA, ``tls`` alone = the
    system roots, neither = plaintext. ``float16``: vectors travel as float16 (decoded to float32)."""

    def __init__(
        self,
        addr: str,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        tls: bool = False,
        float16: bool = False,
    ) -> None:
        self.addr = addr
        self.format = gkc_pb2.WIRE_FORMAT_FLOAT16 if float16 else gkc_pb2.WIRE_FORMAT_FLOAT32
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            # Reconnect quickly once GKC is back (the breaker's probes need a live channel).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.channel = open_channel(aio, addr, options, ca_file=ca_file, tls=tls)
        self._call = gkc_pb2_grpc.GkcStub(self.channel).BatchGet

    async def batch_get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        version: int,
        timeout_s: float,
    ) -> Lookup:
        request = gkc_pb2.BatchGetRequest(
            user_id=user_id, item_ids=item_ids, category_ids=category_ids, version=version, format=self.format
        )
        try:
            response = await self._call(request, timeout=timeout_s)
        except aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return lookup_from_proto(response)

    async def close(self) -> None:
        await self.channel.close()
