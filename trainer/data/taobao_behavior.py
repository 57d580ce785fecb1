"""``keep data taobao-behavior``: real Taobao UserBehavior rows turned into the impression-log contract.

Data: a sample of the public Taobao **UserBehavior** data set (Alibaba Tianchi data set 649: user
behaviours on Taobao, 2017-11-25 to 2017-12-03), see the folder's NOTICE.md (never commit its rows).
Its rows are ``user_id, item_id, category_id, behavior_type (pv|cart|fav|buy), ts``; there are no
impressions, so this module builds them (docs/experiments-taobao-behavior.md):

- **Impression** = a page view: the first ``pv`` of a (user, item) on a day. Later views of the same
  item that day are the same impression (not new rows with the same label).
- **Labels, within the day only**: ``click`` = the user carts, favs or buys that item at or after the
  view, the same day; ``cart`` = carts it; ``conversion`` = buys it. A label never looks past the end
  of the impression's day, so a split between days never lets a label cross it.
- **Users seen only in the sample's 2-hour slice** (2017-11-26 09:00-11:10 China time, ~60k users
  with a few rows each) are dropped: the rest of their day is missing, so their labels would be.
- **One ``ts`` per user and day**: the user's first view that day, for every impression of that day.
  A label is known only when the cart/fav/buy happens, hours after the view; with each row at its own
  view time, a clicked row would sit in the behaviour history of the user's later views that day
  before its click had happened. Then "a click earlier today" marks the rows viewed *after* the item
  the user will cart (mostly unclicked), the extractor learns "longer history → lower score" and its
  knowledge ranks heavy users below light ones: the Taobao row-level AUC < 0.5 of issue 14
  (docs/experiments-taobao-behavior.md). With one ``ts`` per user-day a history holds only earlier
  days, whose labels are all settled.
- **Days** are the contract's UTC days (``ts // 86400``). Rows outside the data set's nine days
  (2017-11-25 00:00 to 2017-12-04 00:00 China time) are dropped (48 in the sample).
- **Split by time**: test = the last ``test_days`` days, train = the ``train_days`` before them (its
  last day is ``keep experiment``'s validation slice), super-domain = every earlier day. The super-
  domain is the same site's earlier behaviour (every user, every category); the sub-domain its later
  days. Every file holds only its own days' impressions and labels.
- Columns: ``user_id``, ``item_id``, ``category_id``, ``ts``, ``click``, ``conversion``, ``cart``
  (no ``shop_id``: the data set has none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.log import DataError
from contract.schema import day_of

FILE_NAME = "user_behavior.csv.gz"
COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "ts")
BEHAVIOURS = ("pv", "cart", "fav", "buy")
#: 2017-11-25 00:00 and 2017-12-04 00:00 China time (UTC+8): the data set's nine days.
FIRST_TS, END_TS = 1_511_539_200, 1_512_316_800
#: The sample's third slice: every user's behaviours between 2017-11-26 09:00 and 11:10 China time.
SLICE_FROM, SLICE_TO = 1_511_658_000, 1_511_665_800
LOG_COLUMNS = ["user_id", "item_id", "category_id", "ts", "click", "conversion", "cart"]
TRAIN_DAYS, TEST_DAYS = 2, 1


def read_behaviours(src: Path) -> pd.DataFrame:
    path = src / FILE_NAME if src.is_dir() else src
    if not path.is_file():
        raise DataError(f"{path}: no such file (set --src to the taobao-userbehavior folder)")
    try:
        df = pd.read_csv(path, dtype={"behavior_type": str})
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be parsed as Taobao UserBehavior rows ({err})") from err
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} missing (expected header {','.join(COLUMNS)})")
    unknown = sorted(set(df["behavior_type"].dropna()) - set(BEHAVIOURS))
    if unknown or df[list(COLUMNS)].isna().any().any():
        raise DataError(f"{path}: column 'behavior_type' has values {unknown or 'missing'}")
    return df[list(COLUMNS)]


def window_only_users(df: pd.DataFrame) -> np.ndarray:
    """Users seen only inside the sample's 2-hour slice: their day is cut at 11:10, so a view's later
    cart/fav/buy is missing (their views would all look unclicked: 0.9% against 2% elsewhere)."""
    inside = (df["ts"] >= SLICE_FROM) & (df["ts"] <= SLICE_TO)
    outside_users = df.loc[~inside, "user_id"].unique()
    return np.setdiff1d(df.loc[inside, "user_id"].unique(), outside_users)


def impressions(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, day) with a view: the first view's ts, labels from later that day."""
    df = df[(df["ts"] >= FIRST_TS) & (df["ts"] < END_TS)]
    df = df[~df["user_id"].isin(window_only_users(df))].copy()
    df["day"] = day_of(df["ts"].to_numpy())
    views = (
        df[df["behavior_type"] == "pv"]
        .sort_values(["user_id", "day", "item_id", "ts"], kind="stable")
        .drop_duplicates(["user_id", "item_id", "day"], keep="first")
    )
    out = views[["user_id", "item_id", "category_id", "ts", "day"]].reset_index(drop=True)
    view_ts = out["ts"].to_numpy()
    acts = df[df["behavior_type"] != "pv"]
    key = ["user_id", "item_id", "day"]
    for label, kinds in (("click", ("cart", "fav", "buy")), ("cart", ("cart",)), ("conversion", ("buy",))):
        # The last such act of the day: a view at or before it is labelled 1.
        last = acts[acts["behavior_type"].isin(kinds)].groupby(key)["ts"].max().rename("act_ts")
        act_ts = out.join(last, on=key)["act_ts"].to_numpy()
        out[label] = (~np.isnan(act_ts) & (act_ts >= view_ts)).astype(np.int8)
    # Only now (labels are fixed): every impression of a user-day at the day's first view.
    out["ts"] = out.groupby(["user_id", "day"])["ts"].transform("min")
    return out.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def split(
    rows: pd.DataFrame, train_days: int = TRAIN_DAYS, test_days: int = TEST_DAYS
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(super, train, test) by day: test = the last ``test_days``, train = the ``train_days`` before."""
    if train_days < 2 or test_days < 1:
        raise DataError(
            f"--train-days must be >= 2 (one validates) and --test-days >= 1 (got {train_days}, {test_days})"
        )
    days = sorted(int(d) for d in rows["day"].unique())
    if len(days) < train_days + test_days + 1:
        raise DataError(f"{len(days)} day(s) of behaviours; need {train_days + test_days + 1} or more")
    test_from, train_from = days[-test_days], days[-(test_days + train_days)]
    day = rows["day"].to_numpy()
    pick = [c for c in LOG_COLUMNS]
    super_df = rows[day < train_from][pick].reset_index(drop=True)
    train = rows[(day >= train_from) & (day < test_from)][pick].reset_index(drop=True)
    test = rows[day >= test_from][pick].reset_index(drop=True)
    return super_df, train, test


def gauc_users(df: pd.DataFrame) -> int:
    g = df.groupby("user_id")["click"].agg(["min", "max"])
    return int(((g["min"] == 0) & (g["max"] == 1)).sum())


def _stats(df: pd.DataFrame) -> dict[str, Any]:
    days = day_of(df["ts"].to_numpy())
    return {
        "rows": len(df),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
        "days": [int(days.min()), int(days.max())] if len(df) else [],
        "clicks": int(df["click"].sum()),
        "click_rate": round(float(df["click"].mean()), 5) if len(df) else 0.0,
        "gauc_users": gauc_users(df),
    }


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    train_days: int = TRAIN_DAYS,
    test_days: int = TEST_DAYS,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """``src`` (the folder or the csv.gz) → ``out``/{super,train,test}.parquet and truth.json."""
    from contract.log import write_log

    rows = impressions(read_behaviours(Path(src)))
    super_df, train, test = split(rows, train_days, test_days)
    root = Path(out)
    paths = {
        "super": write_log(super_df, root / "super.parquet"),
        "train": write_log(train, root / "train.parquet"),
        "test": write_log(test, root / "test.parquet"),
    }
    sub_users = set(train["user_id"]) | set(test["user_id"])
    truth = {
        "dataset": "taobao-behavior",
        "credit": "Alibaba Tianchi data set 649 (Taobao UserBehavior, 2017-11-25..2017-12-03), a sample",
        "construction": {
            "impression": "the first pv of a (user, item) on a UTC day",
            "ts": "the user's first pv of that day, for all of the user's impressions that day (a label "
            "is settled only by the end of the day, so a history holds only earlier days)",
            "click": "cart, fav or buy of that item by that user at or after the view, the same day",
            "cart": "cart, same rule",
            "conversion": "buy, same rule",
            "split": f"test = last {test_days} day(s), train = the {train_days} before (the last one "
            "validates), super-domain = every earlier day",
        },
        "sizes": {"super": _stats(super_df), "train": _stats(train), "test": _stats(test)},
        "sub_users_in_super": len(sub_users & set(super_df["user_id"])),
    }
    paths["truth"] = root / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    return paths, truth
