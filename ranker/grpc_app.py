"""The gRPC front (``keep.ranker.v1.Ranker``): converts messages, nothing else.

Domain errors (``InvalidArgument``, ``NotFound``) become status codes in the shared error interceptor
(:mod:`services.grpc_server`); the caller's deadline, when set, bounds the GKC call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from grpc import aio

from protos import ranker_pb2, ranker_pb2_grpc
from ranker.service import RankerService, RankQuery
from services.errors import KeepError

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, service: RankerService) -> None:
        self.service = service

    async def Rank(
        self, request: ranker_pb2.RankRequest, context: aio.ServicerContext
    ) -> ranker_pb2.RankResponse:
        started = time.perf_counter()
        code = "OK"
        try:
            remaining = context.time_remaining()
            deadline = self.service.clock() + remaining if remaining is not None else None
            ranking = await self.service.rank(
                RankQuery(
                    user_id=request.user_id,
                    item_ids=list(request.item_ids),
                    category_ids=list(request.category_ids),
                    shop_ids=list(request.shop_ids),
                    model=request.model,
                ),
                deadline,
            )
            return ranker_pb2.RankResponse(
                scores=ranking.scores.tolist(),
                model=ranking.model,
                model_revision=ranking.revision,
                knowledge_version=ranking.knowledge_version,
                degraded=ranking.degraded,
                degraded_reason=ranking.reason,
            )
        except KeepError as err:
            code = err.grpc_code
            raise
        except asyncio.CancelledError:  # the client went away (or its deadline passed): counted, not logged
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            if self.service.metrics is not None:
                self.service.metrics.observe_request("grpc", "Rank", code, time.perf_counter() - started)


def register(servicer: RankerServicer) -> Callable[[aio.Server], None]:
    return lambda server: ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
