"""The ``keep.gkc.v1.Gkc`` servicer: wire ↔ :class:`gkc.wire.Packed`, nothing else.

While Redis answers, the read (sync redis-py + hiredis, sub-millisecond) runs on the event loop
thread: a hand-off to a thread costs 40-150 µs of a ~1.3 ms answer (docs/gkc.md, "Speed"). Once a
read failed with UNAVAILABLE, or the health monitor saw a problem, reads run on a small thread pool for
the next ``POOLED_S`` seconds: a blocking call to a stuck or failing-over node then holds one thread
for at most ``GKC_REDIS_TIMEOUT_S`` while requests that touch healthy nodes keep being answered. So at
most the first failing call of an outage holds the loop, for one Redis timeout. Throughput comes from
several server processes sharing the port (``GKC_WORKERS``, SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grpc import aio

from gkc.metrics import GkcMetrics
from gkc.read_path import KnowledgeCenter
from gkc.wire import to_proto
from protos import gkc_pb2, gkc_pb2_grpc
from services.errors import DeadlineExceeded, KeepError, Unavailable

SERVICE_NAME = gkc_pb2.DESCRIPTOR.services_by_name["Gkc"].full_name
#: How long reads stay on the thread pool after a sign of trouble.
POOLED_S = 30.0


class GkcServicer(gkc_pb2_grpc.GkcServicer):
    def __init__(self, center: KnowledgeCenter, metrics: GkcMetrics, *, threads: int = 8) -> None:
        self.center = center
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gkc-read")
        #: Until this ``time.monotonic()``, reads run on the pool (see the module docstring).
        self.pooled_until = 0.0
        self._ok_latency = metrics.latency.labels("BatchGet", "OK")

    async def BatchGet(
        self, request: gkc_pb2.BatchGetRequest, context: aio.ServicerContext[Any, Any]
    ) -> gkc_pb2.BatchGetResponse:
        start = time.perf_counter()
        status = "OK"
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("deadline passed before the lookup started")
            self.metrics.candidates.observe(len(request.item_ids))
            args = (
                request.user_id,
                request.item_ids,
                request.category_ids,
                request.version,
                request.format == gkc_pb2.WIRE_FORMAT_FLOAT16,
            )
            if time.monotonic() < self.pooled_until:
                packed = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.center.batch_get, *args
                )
            else:
                try:
                    packed = self.center.batch_get(*args)
                except Unavailable:
                    self.pool_for(POOLED_S)
                    raise
            return to_proto(packed)
        except KeepError as err:
            status = err.grpc_code
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            child = self._ok_latency if status == "OK" else self.metrics.latency.labels("BatchGet", status)
            child.observe(time.perf_counter() - start)

    def pool_for(self, seconds: float) -> None:
        self.pooled_until = max(self.pooled_until, time.monotonic() + seconds)


def register(servicer: GkcServicer) -> Any:
    return lambda server: gkc_pb2_grpc.add_GkcServicer_to_server(servicer, server)
