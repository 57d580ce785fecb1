"""Behaviour sequences served online equal the trainer's leakage-free windows for rows after the log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.ids import Vocabs
from ranker import synthetic
from ranker.features import SequenceStore, build_store, main, open_store
from services.errors import InvalidArgument
from trainer.data.dataset import EncodedLog


def test_store_matches_trainer_history_windows(tmp_path: Path) -> None:
    log = pd.DataFrame(synthetic.make_log(users=20, items=60, rows_per_user=40, seed=3))
    # same-second clicks: ties must keep file order, as the trainer's stable sort does
    ts, click = log["ts"].to_numpy().copy(), log["click"].to_numpy().copy()
    ts[5], click[4], click[5] = ts[4], 1, 1
    log["ts"], log["click"] = ts, click
    store = SequenceStore.from_clicks(
        log["user_id"], log["item_id"], log["category_id"], log["ts"], log["click"], max_len=7
    )
    vocabs = Vocabs.build(log)
    later = log.groupby("user_id", as_index=False).first()
    later["ts"] = log["ts"].max() + 1
    enc = EncodedLog.encode(later, vocabs, history_from=log, max_len=7)
    rows = np.arange(len(later))
    expected_items = enc.history.gather(rows, "item")
    expected_cats = enc.history.gather(rows, "category")
    for k, user in enumerate(later["user_id"]):
        items, cats = store.history(user)
        assert len(items) == enc.history.lengths(rows)[k]
        padded = np.zeros(7, dtype=np.int64)
        padded[7 - len(items) :] = vocabs.item.lookup(np.array(items, dtype=str)) if items else []
        np.testing.assert_array_equal(padded, expected_items[k])
        padded[7 - len(cats) :] = vocabs.category.lookup(np.array(cats, dtype=str)) if cats else []
        np.testing.assert_array_equal(padded, expected_cats[k])
    assert store.history("nobody") == ([], [])


def test_save_load_and_build_from_parquet_log(tmp_path: Path) -> None:
    log = pd.DataFrame(synthetic.make_log(users=5, rows_per_user=10))
    log["user_id"] = np.arange(len(log)) % 5  # integer ids travel as their canonical strings
    log.to_parquet(tmp_path / "train.parquet")
    built = build_store(tmp_path / "train.parquet", max_len=4)
    assert built.max_len == 4 and set(built.users.tolist()) <= {"0", "1", "2", "3", "4"}
    assert main([str(tmp_path / "train.parquet"), str(tmp_path), "--max-len", "4"]) == 0
    loaded = open_store(tmp_path / "features.npz")
    assert len(loaded) == len(built)
    for user in built.users.tolist():
        assert loaded.history(user) == built.history(user)
        assert 0 < len(built.history(user)[0]) <= 4


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        open_store(tmp_path / "missing.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgument, match="unreadable feature store"):
        open_store(tmp_path / "broken.npz")
    pd.DataFrame({"user_id": [1], "ts": [1]}).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(InvalidArgument, match="column 'item_id' is missing"):
        open_store(tmp_path / "log.csv")
    assert len(open_store(None)) == 0
