"""The ranker's domain core: validate, fetch knowledge once, score the whole batch, degrade on faults.

One request: take one model snapshot (it stays the same to the end, whatever reloads meanwhile), ask
GKC once for the model's pinned knowledge version (``BatchGet`` dedupes repeated items and categories),
assemble K̂ with :func:`ranker.knowledge.assemble` (the trainer's code path) and run the model on all
candidates at once in a worker thread (torch releases the GIL, so workers use the cores).

The user's behaviour sequence comes from the sequence store (``ranker.history.HistorySource``, one
round trip, concurrent with the GKC call): the last N clicks strictly before the request's time. When
the store is down or slow the request is scored with an empty history, ``degraded_reason`` says
``features_unavailable`` and the degraded counter counts it.

Faults never fail a request: when GKC is slow (its call is budgeted against the request deadline), down,
behind an open circuit breaker, has lost the pinned version or answers with knowledge whose identity
is not the one the model pins (``version_mismatch``), the base model answers (plug-in output
zeroed) and the answer says ``degraded`` with the reason; a metric counts it. Only invalid requests and
unknown models are errors.

No grpc or fastapi here: the fronts (``grpc_app``, ``rest_app``) only convert. The knowledge source is
any object with an async ``batch_get(user, items, categories, version, timeout_s) -> Lookup``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch

from gkc.lookup import Lookup
from ranker.admission import Admission
from ranker.breaker import BreakerState, CircuitBreaker
from ranker.history import EMPTY_HISTORY, ClickEvent, EventSink, History, HistorySource, validate_events
from ranker.knowledge import found_flags
from ranker.metrics import RankerMetrics
from ranker.registry import ModelRegistry, ModelSnapshot
from ranker.scoring import Encoded
from services.errors import DeadlineExceeded, InvalidArgument, KeepError, NotFound, Unavailable

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Degraded reasons (the ``reason`` label and ``RankResponse.degraded_reason``).
BREAKER_OPEN = "breaker_open"
GKC_TIMEOUT = "gkc_timeout"
GKC_UNAVAILABLE = "gkc_unavailable"
VERSION_NOT_FOUND = "version_not_found"
#: GKC answered with knowledge whose identity (number, publish id, content checksum) is not the model's pin.
VERSION_MISMATCH = "version_mismatch"
DEADLINE = "deadline"
KNOWLEDGE_ERROR = "knowledge_error"
FEATURES_UNAVAILABLE = "features_unavailable"
#: Below this much time left there is no point in calling GKC.
MIN_GKC_BUDGET_S = 0.001
#: Extra time granted past the source's own timeout before the call is abandoned.
TIMEOUT_GRACE_S = 0.002


class KnowledgeSource(Protocol):
    async def batch_get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        category_ids: Sequence[str],
        version: int,
        timeout_s: float,
    ) -> Lookup: ...


@dataclass(frozen=True)
class _Done:
    """A scored request and what it cost, whichever way it was scheduled."""

    scores: np.ndarray
    encoded: Encoded
    lookup: Lookup | None
    gkc_reason: str
    model_reason: str
    features_reason: str
    gkc_s: float
    model_s: float
    features_s: float
    handoff_s: float


@dataclass(frozen=True)
class RankQuery:
    user_id: str
    item_ids: Sequence[str]
    category_ids: Sequence[str]
    shop_ids: Sequence[str] = ()
    model: str = ""


@dataclass(frozen=True)
class Ranking:
    scores: np.ndarray  # [n] float32, request order
    model: str
    revision: str
    knowledge_version: int
    degraded: bool
    #: Every reason, comma-separated (GKC's first), "" when not degraded.
    reason: str
    gkc_s: float
    model_s: float
    #: Candidates with an item id the model never saw, and the user's clicks found in its history.
    unknown_items: int = 0
    history_len: int = 0
    features_s: float = 0.0


@dataclass(frozen=True)
class Budget:
    """Time limits: GKC's own timeout, the default request deadline, the time kept for the model."""

    gkc_timeout_s: float = 0.1
    request_deadline_s: float = 0.25
    model_reserve_s: float = 0.02
    features_timeout_s: float = 0.05


class RankerService:
    def __init__(
        self,
        registry: ModelRegistry,
        source: KnowledgeSource | None,
        *,
        breaker: CircuitBreaker | None = None,
        metrics: RankerMetrics | None = None,
        max_candidates: int = 1000,
        budget: Budget | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        features: HistorySource | None = None,
        events: EventSink | None = None,
        wall: Callable[[], float] = time.time,
        admission: Admission | None = None,
        overlap_knowledge: bool = True,
    ) -> None:
        self.registry = registry
        self.source = source
        self.features = features
        self.events = events
        self.wall = wall
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker(
            on_change=metrics.on_breaker if metrics is not None else None
        )
        self.max_candidates = max_candidates
        self.budget = budget or Budget()
        self.executor = executor
        self.clock = clock
        self.admission = admission or Admission(0, 0, 0.0, clock=clock)
        #: Run the model's knowledge-free part while GKC answers (two hand-offs to the worker, not one).
        self.overlap_knowledge = overlap_knowledge
        self._last_loud: dict[tuple[str, int], float] = {}

    def validate(self, q: RankQuery) -> None:
        if not q.user_id:
            raise InvalidArgument("user_id is required")
        n = len(q.item_ids)
        if n == 0:
            raise InvalidArgument("at least one candidate is required")
        if n > self.max_candidates:
            raise InvalidArgument(f"{n} candidates; at most {self.max_candidates} per request")
        if len(q.category_ids) != n:
            raise InvalidArgument(f"{n} item ids but {len(q.category_ids)} category ids: one per candidate")
        if q.shop_ids and len(q.shop_ids) != n:
            raise InvalidArgument(f"{n} candidates but {len(q.shop_ids)} shop ids: none or one per candidate")
        if not all(q.item_ids) or not all(q.category_ids):
            raise InvalidArgument("every candidate needs a non-empty item id and category id")

    async def rank(self, q: RankQuery, deadline: float | None = None) -> Ranking:
        """Score ``q``. ``deadline`` is a ``clock()`` time (the caller's gRPC deadline), if any."""
        self.validate(q)
        snapshot = self.registry.get(q.model)
        if self.metrics is not None:
            self.metrics.candidates.observe(len(q.item_ids))
        before = self.wall()  # the request's time: its window ends strictly before it
        # Back-pressure: wait for a slot (or be refused, Overloaded) before any timer starts.
        async with self.admission.slot(deadline) as queued_s:
            start = self.clock()
            limit = start + self.budget.request_deadline_s  # the budget starts at admission
            deadline = limit if deadline is None else min(deadline, limit)
            # Overlapping buys latency with a second hand-off to the worker: worth it while the CPUs
            # have room, not when requests already queue for a slot (then every core is scoring).
            overlap = self.overlap_knowledge and not self.admission.waiting
            if overlap and snapshot.scorer.knowledge is not None:
                done = await self._overlapped(snapshot, q, before, deadline)
            else:
                done = await self._sequential(snapshot, q, before, deadline)
        lookup, encoded = done.lookup, done.encoded
        reasons = [r for r in (done.gkc_reason or done.model_reason, done.features_reason) if r]
        if self.metrics is not None:
            self.metrics.stage.labels("gkc").observe(done.gkc_s)
            self.metrics.stage.labels("model").observe(done.model_s)
            self.metrics.stage.labels("handoff").observe(max(done.handoff_s, 0.0))
            self.metrics.stage.labels("queue").observe(queued_s)
            if self.features is not None:
                self.metrics.stage.labels("features").observe(done.features_s)
            for r in reasons:
                self.metrics.degraded.labels(r, snapshot.name).inc()
        return Ranking(
            scores=done.scores,
            model=snapshot.name,
            revision=snapshot.revision,
            knowledge_version=lookup.version if lookup is not None else snapshot.knowledge_version,
            degraded=bool(reasons),
            reason=",".join(reasons),
            gkc_s=done.gkc_s,
            model_s=done.model_s,
            unknown_items=encoded.unknown_items,
            history_len=encoded.history_len,
            features_s=done.features_s,
        )

    async def _sequential(
        self, snapshot: ModelSnapshot, q: RankQuery, before: float, deadline: float
    ) -> _Done:
        """History and knowledge concurrently, then the whole model in one step on the worker."""
        (history, features_reason, features_s), (lookup, gkc_reason, gkc_s) = await asyncio.gather(
            self._history(q.user_id, before), self._knowledge(snapshot, q, deadline)
        )
        t0 = self.clock()
        scored = await self._in_worker(self._score, snapshot, q, history, lookup)
        encoded, scores, model_reason, model_s = scored
        return _Done(scores, encoded, lookup, gkc_reason, model_reason, features_reason,
                     gkc_s, model_s, features_s, self.clock() - t0 - model_s)  # fmt: skip

    async def _overlapped(
        self, snapshot: ModelSnapshot, q: RankQuery, before: float, deadline: float
    ) -> _Done:
        """The part of the model that needs no knowledge (``Scorer.prepare``: the features, the attention,
        the MLP up to the plug-in's layer) runs while GKC answers; the plug-in and the rest after."""
        gkc = asyncio.ensure_future(self._knowledge(snapshot, q, deadline))
        try:
            history, features_reason, features_s = await self._history(q.user_id, before)
            t0 = self.clock()
            encoded, h_m, prepare_s = await self._in_worker(self._prepare, snapshot, q, history)
            handoff_s = self.clock() - t0 - prepare_s
            lookup, gkc_reason, gkc_s = await gkc
        except BaseException:
            gkc.cancel()
            raise
        t1 = self.clock()
        scores, model_reason, finish_s = await self._in_worker(self._finish, snapshot, encoded, h_m, lookup)
        handoff_s += self.clock() - t1 - finish_s
        return _Done(scores, encoded, lookup, gkc_reason, model_reason, features_reason,
                     gkc_s, prepare_s + finish_s, features_s, handoff_s)  # fmt: skip

    async def _in_worker(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on a model worker (inline without an executor: tests)."""
        if self.executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _history(self, user_id: str, before: float) -> tuple[History, str, float]:
        """The user's window, the degraded reason ("" if none) and the time spent."""
        if self.features is None:
            return EMPTY_HISTORY, "", 0.0
        t0 = self.clock()
        try:
            history = await self.features.history(user_id, before, self.budget.features_timeout_s)
        except Exception as err:  # Unavailable (down, slow) or anything else: never fail the request
            self._loud_features(err)
            return EMPTY_HISTORY, FEATURES_UNAVAILABLE, self.clock() - t0
        return history, "", self.clock() - t0

    async def record_events(self, events: Sequence[ClickEvent], transport: str = "api") -> int:
        """Validate a batch of click events and record it; the number that were new (a redelivered
        event id is recorded once). ``Unavailable`` when the store cannot take it (retry then)."""
        validate_events(events, self.wall())
        if self.events is None:
            raise Unavailable("this ranker has no feature store to record events in")
        added = await self.events.record(events)
        if self.metrics is not None:
            self.metrics.events.labels(transport, "recorded").inc(added)
            self.metrics.events.labels(transport, "duplicate").inc(len(events) - added)
        return added

    def _score(
        self, snapshot: ModelSnapshot, q: RankQuery, history: History, lookup: Lookup | None
    ) -> tuple[Encoded, np.ndarray, str, float]:
        """:meth:`_prepare` then :meth:`_finish` in one step."""
        encoded, h_m, prepare_s = self._prepare(snapshot, q, history)
        scores, reason, finish_s = self._finish(snapshot, encoded, h_m, lookup)
        return encoded, scores, reason, prepare_s + finish_s

    def _prepare(
        self, snapshot: ModelSnapshot, q: RankQuery, history: History
    ) -> tuple[Encoded, torch.Tensor, float]:
        """The encoded request, ``h_m`` (the model before its plug-in) and the seconds this step took in
        the thread that runs it (the model step without the hand-off to and from the worker)."""
        t0 = self.clock()
        scorer = snapshot.scorer
        encoded = scorer.encode(q.user_id, history, q.item_ids, q.category_ids, q.shop_ids)
        return encoded, scorer.prepare(encoded), self.clock() - t0

    def _finish(
        self, snapshot: ModelSnapshot, encoded: Encoded, h_m: torch.Tensor, lookup: Lookup | None
    ) -> tuple[np.ndarray, str, float]:
        """Probabilities, a degraded reason ("" = none) when K̂ cannot be built from ``lookup`` (the base
        model answers then) and the seconds this step took."""
        t0 = self.clock()
        scorer = snapshot.scorer
        knowledge, reason = None, ""
        if lookup is not None:
            try:
                knowledge = scorer.knowledge_matrix(lookup)
            except KeepError as err:  # e.g. the version's dims differ from what the model was trained on
                self._loud(snapshot, lookup.version, f"knowledge is unusable: {err}")
                reason = KNOWLEDGE_ERROR
            else:
                if self.metrics is not None:
                    found = found_flags(lookup).sum(axis=0)
                    self.metrics.observe_coverage(
                        snapshot.name, lookup.n_candidates, (int(found[0]), int(found[1]), int(found[2]))
                    )
        scores = scorer.probabilities(scorer.finish(h_m, knowledge))
        return scores, reason, self.clock() - t0

    async def _knowledge(
        self, snapshot: ModelSnapshot, q: RankQuery, deadline: float
    ) -> tuple[Lookup | None, str, float]:
        """The lookup (``None`` when degraded), the degraded reason ("" if none) and the time spent."""
        scorer = snapshot.scorer
        if scorer.knowledge is None or self.source is None:
            return None, ("" if scorer.knowledge is None else GKC_UNAVAILABLE), 0.0
        timeout = min(self.budget.gkc_timeout_s, deadline - self.clock() - self.budget.model_reserve_s)
        if timeout < MIN_GKC_BUDGET_S:
            return None, DEADLINE, 0.0
        if not self.breaker.allow():
            return None, BREAKER_OPEN, 0.0
        version = scorer.knowledge_version
        t0 = self.clock()
        try:
            # The source gets the budget as its own timeout; wait_for enforces it whatever the source does.
            lookup = await asyncio.wait_for(
                self.source.batch_get(q.user_id, q.item_ids, q.category_ids, version, timeout),
                timeout + TIMEOUT_GRACE_S,
            )
        except (DeadlineExceeded, TimeoutError):
            self.breaker.record_failure()
            return None, GKC_TIMEOUT, self.clock() - t0
        except Unavailable:
            self.breaker.record_failure()
            return None, GKC_UNAVAILABLE, self.clock() - t0
        except NotFound as err:
            self.breaker.record_success()  # GKC answered: it is up, the version is gone
            self._loud(snapshot, version, f"GKC no longer has knowledge version {version}: {err}")
            return None, VERSION_NOT_FOUND, self.clock() - t0
        except KeepError as err:
            self.breaker.record_success()
            self._loud(snapshot, version, f"knowledge for version {version} is unusable: {err}")
            return None, KNOWLEDGE_ERROR, self.clock() - t0
        except Exception:
            self.breaker.record_failure()
            log.exception("GKC lookup failed unexpectedly for model %r", snapshot.name)
            return None, KNOWLEDGE_ERROR, self.clock() - t0
        self.breaker.record_success()
        problem = scorer.knowledge[1].identity_problem(lookup.version, lookup.publish_id, lookup.checksum)
        if problem:
            self._loud(snapshot, version, f"GKC answered other knowledge than the model's: {problem}")
            return None, VERSION_MISMATCH, self.clock() - t0
        return lookup, "", self.clock() - t0

    def _loud_features(self, err: Exception) -> None:
        now = self.clock()
        if now - self._last_loud.get(("", -1), -1e9) >= 10.0:
            self._last_loud[("", -1)] = now
            log.error("feature store unavailable, scoring with empty histories (degraded): %s", err)

    def _loud(self, snapshot: ModelSnapshot, version: int, message: str) -> None:
        """ERROR log, at most once per model and version every 10 s (a flood helps nobody)."""
        key = (snapshot.name, version)
        now = self.clock()
        if now - self._last_loud.get(key, -1e9) >= 10.0:
            self._last_loud[key] = now
            log.error(
                "model %r (revision %s) is serving DEGRADED: %s; retrain or republish the version",
                snapshot.name,
                snapshot.revision,
                message,
            )

    def health(self) -> dict[str, object]:
        models = self.registry.snapshots()
        breaker = BreakerState(self.breaker.state)
        # "degraded": serving, but every answer from a model with knowledge comes from its base part
        status = "no_models" if not models else ("degraded" if breaker == BreakerState.OPEN else "ok")
        return {
            "status": status,
            "models": [m.name for m in models],
            "default_model": self.registry.default_name() if models else None,
            "breaker": BreakerState(self.breaker.state).name.lower(),
        }
