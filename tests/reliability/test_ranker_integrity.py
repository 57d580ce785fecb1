"""The ranker serves a model only the knowledge it was trained with, and says how much of it it finds
(issue 11, deliver 1 serving half and deliver 10's metric).

A real GKC and a real ranker on free ports; a synthetic model pinned to bundle A's content.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from bench import ranker_world
from gkc.bundle_reader import BundleReader
from gkc.client import GkcOpsClient
from protos import ranker_pb2, ranker_pb2_grpc
from tests.support.servers import launch_ranker

pytestmark = [pytest.mark.reliability, pytest.mark.redis]
USERS, ITEMS, CATEGORIES = 20, 100, 5


def _requests(n: int) -> list[ranker_pb2.RankRequest]:
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        items = rng.integers(0, ITEMS, 15)
        out.append(
            ranker_pb2.RankRequest(
                user_id=f"u{k % USERS}",
                item_ids=[f"i{i}" for i in items],
                category_ids=[f"c{c}" for c in ranker_world.item_category(items, CATEGORIES)],
            )
        )
    return out


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_other_knowledge_is_version_mismatch_and_coverage_is_exported(start_gkc: Any, tmp_path: Path) -> None:
    """A model trained from bundle A without a GKC number reads the active version; once another
    publish (B) is activated its answers are degraded with reason ``version_mismatch`` (base model)
    instead of scoring B's knowledge. ``keep_ranker_knowledge_coverage`` equals the share of candidates
    whose user / item / user-category knowledge bundle A holds, computed offline.

    Before: the ranker compared only block sizes and served B's knowledge with ``degraded: false``;
    no coverage metric existed."""
    from ranker.knowledge import found_flags  # new with this test: imported here so it can fail before

    svc = start_gkc()
    ops = GkcOpsClient(svc.http_url, svc.token)
    log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=10, seed=3)
    a = ranker_world.make_bundle(tmp_path / "a", USERS, ITEMS, CATEGORIES, seed=1, missing=0.3)
    b = ranker_world.make_bundle(tmp_path / "b", USERS, ITEMS, CATEGORIES, seed=2, missing=0.3)
    ops.publish(a, progress=False)
    ranker_world.make_artifact(tmp_path / "models" / "ctr", log, a, 0, seed=3, mlp=(16, 8))
    ranker = launch_ranker(tmp_path / "ranker", tmp_path / "models", svc.grpc_addr)
    requests = _requests(20)
    try:
        with grpc.insecure_channel(ranker.grpc_addr) as channel:
            rank = ranker_pb2_grpc.RankerStub(channel).Rank
            before = [rank(r, timeout=10) for r in requests]
            assert not any(r.degraded for r in before), [r.degraded_reason for r in before]
            metrics = httpx.get(f"{ranker.http_url}/metrics", timeout=10).text
            reader = BundleReader.open(a)
            flags = np.concatenate(
                [
                    found_flags(reader.batch_get(r.user_id, list(r.item_ids), list(r.category_ids)))
                    for r in requests
                ]
            )
            expected = flags.mean(axis=0)
            got = [
                _metric(metrics, "keep_ranker_knowledge_coverage", model="ctr", kind=kind)
                for kind in ("user", "item", "user_category")
            ]
            assert np.allclose(got, expected), (got, expected)
            assert expected.min() > 0.0 and expected.max() < 1.0  # both found and missing rows seen

            vb = int(ops.publish(b, progress=False)["version"])
            ops.activate(vb)
            after = [rank(r, timeout=10) for r in requests]
        reasons = {r.degraded_reason for r in after}
        assert reasons == {"version_mismatch"}, reasons
        assert all(len(r.scores) == len(q.item_ids) for r, q in zip(after, requests, strict=True))
        assert re.search("serving DEGRADED.*other knowledge", ranker.log())
        mismatches = _metric(
            httpx.get(f"{ranker.http_url}/metrics", timeout=10).text,
            "keep_ranker_degraded_total",
            reason="version_mismatch",
        )
        assert mismatches == len(requests)
        print(
            f"\nRELIABILITY ranker_identity before_degraded=0 after_activation version_mismatch="
            f"{len(after)}/{len(after)} coverage user/item/uc={[round(g, 3) for g in got]}"
        )
    finally:
        ranker.stop()
