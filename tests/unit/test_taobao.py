"""The Taobao converter, run on the real sample files (skipped where the shared folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.cli import main
from trainer.commands.data import default_taobao_dir
from trainer.data.readers import read_log
from trainer.data.schema import day_of
from trainer.data.taobao import CSV_COLUMNS, CSV_NAME, SUB_SLOT, SUPER_SLOT

SRC = default_taobao_dir()
pytestmark = pytest.mark.skipif(not (SRC / CSV_NAME).is_file(), reason=f"no Taobao sample under {SRC}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("taobao")
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    return pd.read_csv(SRC / CSV_NAME, header=None, names=CSV_COLUMNS, dtype={"pid": str})


def test_contract_round_trip_and_counts(converted: Path, source: pd.DataFrame) -> None:
    super_df = read_log(converted / "super.parquet")
    train = read_log(converted / "train.parquet")
    test = read_log(converted / "test.parquet")
    sub = source[source["pid"] == SUB_SLOT]
    # Every sub-slot impression lands in train or test, with its labels.
    assert len(train) + len(test) == len(sub) == 3_893
    assert int(train["click"].sum() + test["click"].sum()) == int(sub["clk"].sum())
    assert sorted(set(train["user_id"]) | set(test["user_id"])) == sorted(set(sub["user_id"]))
    # The other slot's impressions on the training days are in the super-domain.
    slot_rows = (pd.read_parquet(converted / "super.parquet")["source"] == f"ad_slot_{SUPER_SLOT}").sum()
    assert 0.6 * 6_107 < slot_rows < 6_107
    assert set(train.columns) >= {"conversion", "shop_id"} and "cart" not in train.columns
    assert 0.3 < super_df["click"].mean() < 0.7  # behaviours plus sampled negatives
    assert 0.03 < test["click"].mean() < 0.1


def test_days_and_order(converted: Path) -> None:
    truth = json.loads((converted / "truth.json").read_text())
    d0 = day_of(np.array([truth["days"]["day0_ts"]]))[0]
    train = read_log(converted / "train.parquet")
    test = read_log(converted / "test.parquet")
    super_df = read_log(converted / "super.parquet")
    assert set((day_of(test["ts"]) - d0).tolist()) == {truth["days"]["test"]}
    assert set((day_of(train["ts"]) - d0).tolist()) == set(
        range(truth["days"]["train"][0], truth["days"]["train"][1] + 1)
    )
    assert super_df["ts"].max() < test["ts"].min()
    assert (np.diff(train["ts"].to_numpy()) > 0).all()  # row order is time order


def test_sub_users_meet_their_histories(converted: Path) -> None:
    truth = json.loads((converted / "truth.json").read_text())
    assert "Tianchi" in truth["credit"] and "56" in truth["credit"]
    assert truth["sub_users"] == 2_160
    # Most sub-domain users have super-domain behaviours (only 9 are in the other ad slot).
    assert truth["sub_users_in_super"] > 0.6 * truth["sub_users"]
    assert sum(truth["super_sources"].values()) == truth["sizes"]["super"]["rows"]


def test_deterministic(converted: Path, tmp_path: Path) -> None:
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(tmp_path)]) == 0
    for name in ("super.parquet", "train.parquet", "test.parquet", "truth.json"):
        assert (converted / name).read_bytes() == (tmp_path / name).read_bytes()


def test_env_default_and_missing_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEP_TAOBAO_DIR", str(tmp_path / "nowhere"))
    assert default_taobao_dir() == tmp_path / "nowhere"
    assert main(["data", "taobao", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("keep: error: ") and CSV_NAME in err and len(err.splitlines()) == 1
