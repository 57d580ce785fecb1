"""The gRPC front (``keep.ranker.v1.Ranker``): converts messages, nothing else.

Domain errors (``InvalidArgument``, ``NotFound``) become status codes in the shared error interceptor
(:mod:`services.grpc_server`); the caller's deadline, when set, bounds the GKC call.
"""

from __future__ import annotations

from collections.abc import Callable

from grpc import aio

from protos import ranker_pb2, ranker_pb2_grpc
from ranker.history import ClickEvent
from ranker.metrics import observed
from ranker.service import RankerService, RankQuery
from services.http import BearerToken

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, service: RankerService, events_auth: BearerToken | None = None) -> None:
        self.service = service
        self.events_auth = events_auth or BearerToken(None, name="RANKER_EVENTS_TOKEN")

    async def RecordEvents(
        self, request: ranker_pb2.RecordEventsRequest, context: aio.ServicerContext
    ) -> ranker_pb2.RecordEventsResponse:
        with observed(self.service.metrics, "grpc", "RecordEvents"):
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.events_auth.check(metadata.get("authorization", ""))
            now = self.service.wall()
            events = [
                ClickEvent(e.event_id, e.user_id, e.item_id, e.category_id, e.ts or now)
                for e in request.events
            ]
            recorded = await self.service.record_events(events, "grpc")
            return ranker_pb2.RecordEventsResponse(received=len(events), recorded=recorded)

    async def Rank(
        self, request: ranker_pb2.RankRequest, context: aio.ServicerContext
    ) -> ranker_pb2.RankResponse:
        with observed(self.service.metrics, "grpc", "Rank"):
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
                unknown_items=ranking.unknown_items,
                history_len=ranking.history_len,
            )


def register(servicer: RankerServicer) -> Callable[[aio.Server], None]:
    return lambda server: ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
