"""Locust user for the ranker: gRPC ``keep.ranker.v1.Ranker/Rank`` with the GKC load mix.

Run by ``loadtests/run.py --ranker``, which starts GKC, publishes versions, starts ``python -m ranker``
with a ``bench.ranker_world.make_artifact`` model pinned to one of them, and passes in the environment:

- ``KEEP_LOAD_RANKER_GRPC``: ``host:port`` of the ranker's gRPC port.
- ``KEEP_LOAD_USERS`` / ``KEEP_LOAD_ITEMS`` / ``KEEP_LOAD_CATEGORIES``: id space sizes (ids ``u<n>`` ...).
- ``KEEP_LOAD_MAX_CANDIDATES``: the top of the candidate count range (default 1000, the ranker's limit).

Same mix as :mod:`locustfile_gkc`: candidate counts log-uniform in [50, max], users and items Zipf
(s = 1.1). Each call fires a Locust ``request`` event named ``ranker.Rank``; a degraded answer is
counted as a success (it is one, by design) but its reason is kept in the request context.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import numpy as np
from locust import User, between, task
from locustfile_gkc import candidate_count, env_int, id_spaces, timed_call  # also: gevent gRPC

from protos import ranker_pb2, ranker_pb2_grpc


class RankerGrpcUser(User):
    """A front end asking the ranker to score one page of candidates."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        rng = np.random.default_rng(id(self) % (2**32))
        self.rng = rng
        self.users, self.items, self.categories = id_spaces(rng)
        self.max_candidates = env_int("KEEP_LOAD_MAX_CANDIDATES", 1000)
        self.channel = grpc.insecure_channel(os.environ["KEEP_LOAD_RANKER_GRPC"])
        self.call = ranker_pb2_grpc.RankerStub(self.channel).Rank

    def on_stop(self) -> None:
        self.channel.close()

    def _request(self) -> ranker_pb2.RankRequest:
        n = candidate_count(self.rng, self.max_candidates)
        items = self.items.sample(n)
        return ranker_pb2.RankRequest(
            user_id=self.users.sample(1)[0],
            item_ids=items,
            category_ids=self.categories.sample(n),
            shop_ids=[f"s{int(i[1:]) % 7}" for i in items],
        )

    @task
    def rank(self) -> None:
        request = self._request()

        def context(resp: Any) -> dict[str, Any]:
            reason = resp.degraded_reason if resp is not None and resp.degraded else ""
            return {"candidates": len(request.item_ids), "degraded": reason}

        timed_call(self, "ranker.Rank", self.call, request, context)
