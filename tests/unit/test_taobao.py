"""The Taobao converter, run on the real sample files (skipped where the shared folder is absent)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.log import read_log
from contract.schema import day_of
from trainer.cli import main
from trainer.commands.data import default_taobao_dir
from trainer.data.taobao import (
    BRAND_ITEM_BASE,
    CSV_COLUMNS,
    CSV_NAME,
    FOLDS,
    TEST_DAY,
    VALIDATION_DAY,
    gauc_users,
    user_folds,
)

SRC = default_taobao_dir()
pytestmark = pytest.mark.skipif(not (SRC / CSV_NAME).is_file(), reason=f"no Taobao sample under {SRC}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("taobao")
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    return pd.read_csv(
        SRC / CSV_NAME,
        header=None,
        names=CSV_COLUMNS,
        dtype={"pid": str, "tag_category_list": str, "tag_brand_list": str},
        na_values=["NULL"],
    )


def test_sub_domain_is_every_impression_test_a_user_fold(converted: Path, source: pd.DataFrame) -> None:
    train = read_log(converted / "train.parquet")
    test = read_log(converted / "test.parquet")
    # Both ad slots are the sub-domain: every impression lands in train or test, with its labels.
    assert len(train) + len(test) == len(source) == 10_000
    assert int(train["click"].sum() + test["click"].sum()) == int(source["clk"].sum())
    assert set(train["user_id"]) | set(test["user_id"]) == set(source["user_id"])
    # Test users are new to the ad scene on the test day: no user is on both sides.
    assert not set(train["user_id"]) & set(test["user_id"])
    assert 0.15 < test["user_id"].nunique() / source["user_id"].nunique() < 0.25
    assert len(gauc_users(test)) >= 30
    # shop_id is the ad's brand (0 where unknown); no cart column.
    both = pd.concat([train, test])
    brand = source["brand"].fillna(0).astype(np.int64)
    want = zip(source["user_id"], source["adgroup_id"], brand, strict=True)
    assert Counter(zip(both["user_id"], both["item_id"], both["shop_id"], strict=True)) == Counter(want)
    assert {"conversion", "shop_id"} <= set(train.columns) and "cart" not in train.columns
    assert 0.03 < test["click"].mean() < 0.1


def test_days_and_order(converted: Path) -> None:
    truth = json.loads((converted / "truth.json").read_text())
    d0 = day_of(np.array([truth["days"]["day0_ts"]]))[0]
    train = read_log(converted / "train.parquet")
    test = read_log(converted / "test.parquet")
    super_df = read_log(converted / "super.parquet")
    assert set((day_of(test["ts"]) - d0).tolist()) == {TEST_DAY}
    train_day = day_of(train["ts"].to_numpy()) - d0
    assert set(train_day.tolist()) == {TEST_DAY - 2, VALIDATION_DAY}
    assert super_df["ts"].max() < train["ts"].min()
    assert (np.diff(train["ts"].to_numpy()) >= 0).all()
    # A user's impressions share one ts (their order is unknown), so none is another's history.
    for df in (train, test):
        assert (df.groupby("user_id")["ts"].nunique() == 1).all()
        assert df.groupby("ts")["user_id"].nunique().max() == 1
    # The validation day holds whole users too, and GAUC is defined on it.
    val = train[train_day == VALIDATION_DAY]
    assert not set(val["user_id"]) & set(train.loc[train_day != VALIDATION_DAY, "user_id"])
    assert truth["validation"]["gauc_users"] == len(gauc_users(val)) >= 30


def test_folds_partition_the_users() -> None:
    users = np.array([5, 3, 3, 9, 1, 7, 5, 2, 8, 6, 4, 0])
    fold = user_folds(users, 3, seed=1)
    per_user = pd.Series(fold).groupby(users).nunique()
    assert (per_user == 1).all()  # a user's rows share one fold
    assert sorted(Counter(pd.Series(fold).groupby(users).first()).values()) == [3, 3, 4]
    assert (user_folds(users, 3, seed=1) == fold).all()


def test_super_domain_behaviours_precede_every_impression(converted: Path, source: pd.DataFrame) -> None:
    """No leakage: a user's behaviours are in the (pre-impression) history list of every one of their rows."""
    super_df = pd.read_parquet(converted / "super.parquet")
    tags = super_df[super_df["source"] == "tag_history"]
    assert (tags["click"] == 1).all() and len(tags) > 50_000
    assert (tags["item_id"] == BRAND_ITEM_BASE + tags["shop_id"]).all()
    lists = source.groupby("user_id")
    for user, beh in list(tags.groupby("user_id"))[::40]:
        rows = lists.get_group(user)
        assert rows["tag_category_list"].notna().all()
        need = Counter(zip(beh["category_id"], beh["shop_id"], strict=True))
        for cats, brands in zip(rows["tag_category_list"], rows["tag_brand_list"], strict=True):
            have = Counter(zip(map(int, cats.split("|")), map(int, brands.split("|")), strict=True))
            assert not need - have, user
    # Users with a missing list on any row have no tag history; the behaviour file's impressions are gone.
    missing = set(source.loc[source["tag_category_list"].isna(), "user_id"])
    assert not missing & set(tags["user_id"])
    assert set(super_df["source"]) == {"tag_history", "behavior_history", "sampled_negative"}
    assert not set(super_df.loc[super_df["source"] == "behavior_history", "user_id"]) & set(source["user_id"])
    assert 0.45 < super_df["click"].mean() < 0.55  # behaviours plus as many sampled negatives


def test_truth(converted: Path) -> None:
    truth = json.loads((converted / "truth.json").read_text())
    assert "Tianchi" in truth["credit"] and "56" in truth["credit"]
    assert truth["sub_users"] == 5_379
    assert truth["split"]["fold"] == 0 and truth["split"]["folds"] == FOLDS
    assert truth["sub_users_in_super"] > 0.5 * truth["sub_users"]
    assert 0 < truth["test_gauc_users_in_super"] <= truth["sizes"]["test"]["gauc_users"]
    assert sum(truth["super_sources"].values()) == truth["sizes"]["super"]["rows"]


def test_other_fold_and_determinism(converted: Path, tmp_path: Path) -> None:
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(tmp_path / "a")]) == 0
    for name in ("super.parquet", "train.parquet", "test.parquet", "truth.json"):
        assert (converted / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(tmp_path / "b"), "--fold", "3"]) == 0
    # The super-domain does not depend on the fold; the test users do.
    assert (converted / "super.parquet").read_bytes() == (tmp_path / "b" / "super.parquet").read_bytes()
    t0 = set(read_log(converted / "test.parquet")["user_id"])
    t3 = set(read_log(tmp_path / "b" / "test.parquet")["user_id"])
    assert t0 and t3 and not t0 & t3


def test_env_default_missing_source_and_bad_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "taobao", "--src", str(SRC), "--out", str(tmp_path / "x"), "--fold", "5"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("keep: error: ") and "--fold" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("KEEP_TAOBAO_DIR", str(tmp_path / "nowhere"))
    assert default_taobao_dir() == tmp_path / "nowhere"
    assert main(["data", "taobao", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("keep: error: ") and CSV_NAME in err and len(err.splitlines()) == 1
