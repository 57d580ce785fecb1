"""``keep data taobao``: the real Taobao display-ad sample, converted into the impression-log contract.

Data: samples of the public Taobao display-advertising data set, **Alibaba Tianchi data set 56**
("Ali_Display_Ad_Click", 8 days of ad impressions on Taobao in 2017), as committed by
AlibabaPAI/Modelzoo-Data and PaddlePaddle/PaddleRec (both Apache-2.0); see the folder's NOTICE.md.

What is what (the choices, also recorded in truth.json):

- **Sub-domain** = ad slot ``430539_1007`` of ad_impressions.csv (3,893 rows, 2,160 users): one
  scene, as in the paper. Its rows on the last day are test.parquet, the others train.parquet.
- **Super-domain** = everything else that happened on Taobao before the test day:
  the other ad slot ``430548_1007`` (6,107 rows) on the training days; the users' earlier behaviours,
  one clicked row per behaviour, from ad_impressions.csv's ``tag_category_list``/``tag_brand_list``
  and from ad_impressions_with_behavior.txt's typed 50-behaviour histories (which win for the users
  they cover); and that file's 500 ad impressions (sampled at 42% clicks, not the natural ~5%).
  Only 9 users are in both slots, so the histories are what connects the sub-domain users to the
  super-domain, exactly the kind of knowledge KEEP is meant to carry over.
- **No timestamps** exist: row order is the only order. ``ts`` is synthesised: the 10,000
  ad_impressions.csv rows are spread evenly, in file order, over 3 days (days 5-7 after 2017-05-06
  00:00 UTC, the first day of the Tianchi data; 8.64 s apart, so ``ts`` is strictly increasing);
  day 7 is the test day. Each user's behaviours are spread evenly, oldest first, over days 0-4, so
  they precede every impression (no leakage into the impressions' behaviour sequences).
- **Columns**: ``click`` = clk; ``conversion`` = buy (4 in the csv; 0 for behaviour rows, whose
  type codes 2-4 are cart/fav/buy in an unknown order); no ``cart`` column (task skipped);
  ``shop_id`` = customer (the advertiser; 0 = unknown, for behaviour rows). Behaviours name a brand
  and a category, not an ad, so their ``item_id`` is ``BRAND_ITEM_BASE + brand`` (an id space apart
  from the ad ids). A ``source`` column says where a super-domain row came from.
- **Sampled negatives**: behaviours are positives only (a super log of 97% clicks teaches a click
  head nothing about interests), so each behaviour gets ``NEGATIVES_PER_BEHAVIOUR`` unclicked rows
  for the same user at the same ``ts``, whose (brand, category) is another behaviour row drawn
  uniformly (i.e. by popularity), seeded, the usual implicit-feedback practice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.data.schema import DataError

CSV_NAME = "ad_impressions.csv"
BEHAVIOR_NAME = "ad_impressions_with_behavior.txt"
CSV_COLUMNS = [
    "clk",
    "buy",
    "pid",
    "adgroup_id",
    "cate_id",
    "campaign_id",
    "customer",
    "brand",
    "user_id",
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
    "tag_category_list",
    "tag_brand_list",
    "price",
]
SUB_SLOT = "430539_1007"
SUPER_SLOT = "430548_1007"
#: 2017-05-06 00:00 UTC, the first day of the Tianchi impressions.
DAY0_TS = 1_494_028_800
DAY = 86_400
HISTORY_DAYS = 5
IMPRESSION_DAYS = 3
BRAND_ITEM_BASE = 1_000_000_000
NEGATIVES_PER_BEHAVIOUR = 1
NEGATIVE_SEED = 56
LOG_COLUMNS = ["user_id", "item_id", "category_id", "shop_id", "ts", "click", "conversion"]


def _read_sources(src: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    csv = src / CSV_NAME
    if not csv.is_file():
        raise DataError(f"{csv}: no such file (set --src or KEEP_TAOBAO_DIR to the Taobao folder)")
    try:
        imp = pd.read_csv(
            csv,
            header=None,
            names=CSV_COLUMNS,
            dtype={"pid": str, "tag_category_list": str, "tag_brand_list": str},
            na_values=["NULL"],
        )
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{csv}: cannot be parsed as the Taobao ad sample ({err})") from err
    for col in ("clk", "buy", "pid", "adgroup_id", "cate_id", "customer", "user_id"):
        if imp[col].isna().any():
            raise DataError(f"{csv}: column '{col}' has missing values")
    behavior = src / BEHAVIOR_NAME
    beh = pd.read_csv(behavior, header=None) if behavior.is_file() else None
    if beh is not None and beh.shape[1] != 267:
        raise DataError(f"{behavior}: expected 267 columns, found {beh.shape[1]}")
    return imp, beh


def _spread(counts: np.ndarray, first_day: int, days: int) -> np.ndarray:
    """ts for each user's ``counts`` events, in order, spread evenly over ``days`` days."""
    user_pos = np.repeat(np.arange(len(counts)), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    j = np.arange(len(user_pos)) - first[user_pos]
    frac = (j + 0.5) / counts[user_pos]
    return DAY0_TS + first_day * DAY + (frac * days * DAY).astype(np.int64)


def _history_rows(
    user: np.ndarray, cats: list[np.ndarray], brands: list[np.ndarray], source: str
) -> pd.DataFrame:
    counts = np.array([len(c) for c in cats], dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": np.repeat(user, counts).astype(np.int64),
            "item_id": BRAND_ITEM_BASE + np.concatenate(brands).astype(np.int64),
            "category_id": np.concatenate(cats).astype(np.int64),
            "shop_id": np.zeros(counts.sum(), dtype=np.int64),
            "ts": _spread(counts, 0, HISTORY_DAYS),
            "click": np.ones(counts.sum(), dtype=np.int8),
            "conversion": np.zeros(counts.sum(), dtype=np.int8),
            "source": source,
        }
    )


def _histories(imp: pd.DataFrame, beh: pd.DataFrame | None) -> pd.DataFrame:
    """One clicked super-domain row per earlier behaviour, per user (behaviour file first)."""
    frames = []
    covered: set[int] = set()
    if beh is not None:
        first = beh.drop_duplicates(subset=250, keep="first")
        users, cats, brands = [], [], []
        for _, row in first.iterrows():
            btag = row.iloc[0:50].to_numpy(np.int64)
            keep = btag > 0
            users.append(int(row.iloc[250]))
            cats.append(row.iloc[50:100].to_numpy(np.int64)[keep])
            brands.append(row.iloc[100:150].to_numpy(np.int64)[keep])
        frames.append(_history_rows(np.array(users), cats, brands, "behavior_history"))
        covered = set(users)
    tagged = imp.dropna(subset=["tag_category_list", "tag_brand_list"]).copy()
    tagged["n"] = tagged["tag_category_list"].str.count(r"\|") + 1
    # A user's rows may carry lists of different lengths: keep the longest (first among equals).
    longest = tagged.sort_values("n", ascending=False, kind="stable").drop_duplicates("user_id")
    longest = longest[~longest["user_id"].isin(covered)].sort_values("user_id")
    cats = [np.array(s.split("|"), dtype=np.int64) for s in longest["tag_category_list"]]
    brands = [np.array(s.split("|"), dtype=np.int64) for s in longest["tag_brand_list"]]
    if any(len(c) != len(b) for c, b in zip(cats, brands, strict=True)):
        raise DataError(f"{CSV_NAME}: column 'tag_brand_list' does not align with 'tag_category_list'")
    frames.append(_history_rows(longest["user_id"].to_numpy(), cats, brands, "tag_history"))
    positives = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(NEGATIVE_SEED)
    negatives = []
    for _ in range(NEGATIVES_PER_BEHAVIOUR):
        pick = rng.integers(0, len(positives), len(positives))
        neg = positives.copy()
        neg["item_id"] = positives["item_id"].to_numpy()[pick]
        neg["category_id"] = positives["category_id"].to_numpy()[pick]
        neg["click"] = np.int8(0)
        neg["source"] = "sampled_negative"
        negatives.append(neg)
    return pd.concat([positives, *negatives], ignore_index=True)


def convert_frames(
    imp: pd.DataFrame, beh: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(super, train, test) frames from the two source tables."""
    n = len(imp)
    ts = DAY0_TS + HISTORY_DAYS * DAY + (np.arange(n) * IMPRESSION_DAYS * DAY) // n
    test_day_start = DAY0_TS + (HISTORY_DAYS + IMPRESSION_DAYS - 1) * DAY
    rows = pd.DataFrame(
        {
            "user_id": imp["user_id"].astype(np.int64),
            "item_id": imp["adgroup_id"].astype(np.int64),
            "category_id": imp["cate_id"].astype(np.int64),
            "shop_id": imp["customer"].astype(np.int64),
            "ts": ts.astype(np.int64),
            "click": imp["clk"].astype(np.int8),
            "conversion": (imp["buy"] > 0).astype(np.int8),
        }
    )
    is_sub = (imp["pid"] == SUB_SLOT).to_numpy()
    is_test = ts >= test_day_start
    train = rows[is_sub & ~is_test].reset_index(drop=True)
    test = rows[is_sub & is_test].reset_index(drop=True)
    slot = rows[(imp["pid"] == SUPER_SLOT).to_numpy() & ~is_test].assign(source="ad_slot_" + SUPER_SLOT)
    parts = [_histories(imp, beh), slot]
    if beh is not None:
        # The behaviour file's own impressions: spread in file order over the training days.
        m = len(beh)
        beh_ts = DAY0_TS + HISTORY_DAYS * DAY + (np.arange(m) * (IMPRESSION_DAYS - 1) * DAY) // m
        parts.append(
            pd.DataFrame(
                {
                    "user_id": beh[250].astype(np.int64),
                    "item_id": beh[259].astype(np.int64),
                    "category_id": beh[260].astype(np.int64),
                    "shop_id": beh[262].astype(np.int64),
                    "ts": beh_ts.astype(np.int64),
                    "click": beh[266].astype(np.int8),
                    "conversion": np.zeros(m, dtype=np.int8),
                    "source": "behavior_impression",
                }
            )
        )
    super_df = pd.concat(parts, ignore_index=True)
    super_df = super_df.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    return super_df[[*LOG_COLUMNS, "source"]], train[LOG_COLUMNS], test[LOG_COLUMNS]


def convert(
    src: str | os.PathLike[str], out: str | os.PathLike[str]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Convert the Taobao folder ``src`` into ``out``/{super,train,test}.parquet and truth.json."""
    from trainer.data.readers import write_log

    src_dir = Path(src)
    imp, beh = _read_sources(src_dir)
    super_df, train, test = convert_frames(imp, beh)
    root = Path(out)
    paths = {
        "super": write_log(super_df, root / "super.parquet"),
        "train": write_log(train, root / "train.parquet"),
        "test": write_log(test, root / "test.parquet"),
    }
    truth = describe(super_df, train, test, behaviour_file=beh is not None)
    paths["truth"] = root / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    return paths, truth


def _stats(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": len(df),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
        "clicks": int(df["click"].sum()),
        "conversions": int(df["conversion"].sum()),
        "click_rate": round(float(df["click"].mean()), 5),
    }


def describe(
    super_df: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, *, behaviour_file: bool
) -> dict[str, Any]:
    sub_users = pd.concat([train["user_id"], test["user_id"]]).unique()
    super_users = set(super_df["user_id"].unique().tolist())
    clicks = super_df.loc[super_df["click"] == 1, "user_id"].value_counts().reindex(sub_users, fill_value=0)
    return {
        "dataset": "taobao",
        "credit": "Alibaba Tianchi data set 56 (Ali_Display_Ad_Click, Taobao display ads, 2017); samples "
        "from AlibabaPAI/Modelzoo-Data and PaddlePaddle/PaddleRec, Apache-2.0",
        "split": {
            "sub_domain": f"ad slot {SUB_SLOT}; last synthesised day = test",
            "super_domain": f"ad slot {SUPER_SLOT} (training days) + users' earlier behaviours "
            "(tag lists, typed histories) + the behaviour file's impressions",
            "behaviour_file_used": behaviour_file,
            "ts": "synthesised from row order: impressions spread evenly over days 5-7, behaviours "
            "over days 0-4; day 0 = 2017-05-06 UTC",
            "labels": "click = clk, conversion = buy; no cart column",
            "negatives": f"{NEGATIVES_PER_BEHAVIOUR} sampled unclicked row(s) per behaviour, "
            f"seed {NEGATIVE_SEED}",
            "shop_id": "customer (advertiser); 0 for behaviour rows",
            "item_id of behaviour rows": f"{BRAND_ITEM_BASE} + brand",
        },
        "days": {
            "day0_ts": DAY0_TS,
            "super": [0, HISTORY_DAYS + IMPRESSION_DAYS - 2],
            "train": [HISTORY_DAYS, HISTORY_DAYS + IMPRESSION_DAYS - 2],
            "test": HISTORY_DAYS + IMPRESSION_DAYS - 1,
        },
        "sizes": {"super": _stats(super_df), "train": _stats(train), "test": _stats(test)},
        "super_sources": {k: int(v) for k, v in super_df["source"].value_counts().sort_index().items()},
        "sub_users": len(sub_users),
        "sub_users_in_super": int(sum(u in super_users for u in sub_users.tolist())),
        "super_clicks_of_sub_users": {
            "mean": round(float(clicks.mean()), 3),
            "median": float(clicks.median()),
            "zero": int((clicks == 0).sum()),
        },
    }
