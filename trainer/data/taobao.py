"""``keep data taobao``: the real Taobao display-ad sample, converted into the impression-log contract.

Data: samples of the public Taobao display-advertising data set, **Alibaba Tianchi data set 56**
("Ali_Display_Ad_Click", 8 days of ad impressions on Taobao in 2017), as committed by
AlibabaPAI/Modelzoo-Data and PaddlePaddle/PaddleRec (both Apache-2.0); see the folder's NOTICE.md.
The split and its reasons: docs/experiments-taobao.md. In short (also recorded in truth.json):

- **Sub-domain** = the display-ad scene: every impression of ad_impressions.csv, both ad slots
  (10,000 rows, 5,379 users). ``item_id`` = the ad (adgroup), ``category_id`` = its category,
  ``shop_id`` = its **brand** (0 = unknown), the one item-side id that ads share with shopping
  behaviours; ``click`` = clk, ``conversion`` = buy; no ``cart`` column (task skipped).
- **Test = a user fold.** The file is sorted by user id and has no timestamps; within a user, row
  order is not time order (of consecutive rows whose behaviour histories nest, 254 go forward in
  time and 283 backward), so "the later rows" of a user would be an arbitrary holdout that leaves
  only ~50 users with both labels. Instead the users are dealt, seeded, into ``folds`` folds: fold
  ``fold`` is the test day (day 7: users who arrive in the ad scene that day), fold ``fold + 1`` is the
  last training day (day 6, which ``keep experiment`` uses as its validation slice), the rest are
  day 5. Every fold in turn gives GAUC on all 263 users with both labels.
- **Super-domain** = the same users' shopping behaviours elsewhere on Taobao, days 0-4, before every
  impression. Each csv row carries its user's earlier behaviours (``tag_category_list`` /
  ``tag_brand_list``, up to 50 (category, brand) pairs, recorded before that impression). A user's
  super-domain behaviours are the multiset **intersection** of the lists on all their rows (a missing
  list counts as empty): those happened before *every* one of the user's impressions, so no click on
  a test ad can show up in its own knowledge, whatever the real order of the rows. Users of
  ad_impressions_with_behavior.txt who are not in the csv add their 50-behaviour histories (for csv
  users that history's time is unknown, so it is not used); that file's own impressions are ad
  impressions (the sub-domain's scene, 42% clicks by sampling, some duplicating csv rows): dropped.
  A behaviour row has ``item_id`` = ``BRAND_ITEM_BASE + brand``, ``shop_id`` = brand.
- **Sampled negatives**: behaviours are positives only, so each gets ``NEGATIVES_PER_BEHAVIOUR``
  unclicked rows for the same user at the same ``ts``, whose (brand, category) is another behaviour
  row drawn uniformly (i.e. by popularity), seeded.
- ``ts`` is synthesised: day 0 = 2017-05-06 00:00 UTC (the first day of the Tianchi impressions); a
  day's users are spread evenly over it in file order, **all of a user's impressions at one ``ts``**
  (their order is unknown, so none is another's history: sub-domain behaviour sequences are empty);
  each user's behaviours are spread evenly, oldest first, over days 0-4.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.log import DataError

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
SLOTS = ("430539_1007", "430548_1007")
#: 2017-05-06 00:00 UTC, the first day of the Tianchi impressions.
DAY0_TS = 1_494_028_800
DAY = 86_400
HISTORY_DAYS = 5
FIT_DAY, VALIDATION_DAY, TEST_DAY = 5, 6, 7
FOLDS = 5
FOLD_SEED = 56
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
    for col in ("clk", "buy", "pid", "adgroup_id", "cate_id", "user_id"):
        if imp[col].isna().any():
            raise DataError(f"{csv}: column '{col}' has missing values")
    behavior = src / BEHAVIOR_NAME
    beh = pd.read_csv(behavior, header=None) if behavior.is_file() else None
    if beh is not None and beh.shape[1] != 267:
        raise DataError(f"{behavior}: expected 267 columns, found {beh.shape[1]}")
    return imp, beh


def user_folds(users: np.ndarray, folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """Each row's user's fold in ``0..folds-1``: the sorted users, shuffled (seeded), dealt round-robin."""
    uniq, inverse = np.unique(users, return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold = np.empty(len(uniq), dtype=np.int64)
    fold[perm] = np.arange(len(uniq)) % folds
    return fold[inverse]


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
    brand = np.concatenate(brands).astype(np.int64) if len(brands) else np.zeros(0, np.int64)
    return pd.DataFrame(
        {
            "user_id": np.repeat(user, counts).astype(np.int64),
            "item_id": BRAND_ITEM_BASE + brand,
            "category_id": np.concatenate(cats).astype(np.int64) if len(cats) else brand,
            "shop_id": brand,
            "ts": _spread(counts, 0, HISTORY_DAYS),
            "click": np.ones(counts.sum(), dtype=np.int8),
            "conversion": np.zeros(counts.sum(), dtype=np.int8),
            "source": source,
        }
    )


def _common_behaviours(cat_lists: list[str], brand_lists: list[str]) -> list[tuple[int, int]]:
    """(category, brand) pairs in every one of a user's lists, as a multiset, in the first list's order."""
    pairs = []
    for c, b in zip(cat_lists, brand_lists, strict=True):
        cs, bs = c.split("|"), b.split("|")
        if len(cs) != len(bs):
            raise DataError(f"{CSV_NAME}: column 'tag_brand_list' does not align with 'tag_category_list'")
        pairs.append([(int(x), int(y)) for x, y in zip(cs, bs, strict=True)])
    common = Counter(pairs[0])
    for p in pairs[1:]:
        common &= Counter(p)
    out = []
    for pair in pairs[0]:
        if common[pair] > 0:
            common[pair] -= 1
            out.append(pair)
    return out


def _histories(imp: pd.DataFrame, beh: pd.DataFrame | None) -> pd.DataFrame:
    """One clicked super-domain row per earlier behaviour, plus sampled unclicked rows."""
    # A missing list is an impression with no behaviour before it: nothing precedes all of that
    # user's impressions (treating it as "unknown" leaks: ads clicked at such rows show up in the
    # user's later lists; see docs/experiments-taobao.md).
    lists = imp[["user_id", "tag_category_list", "tag_brand_list"]]
    missing = lists[["tag_category_list", "tag_brand_list"]].isna().any(axis=1)
    tagged = lists[~lists["user_id"].isin(lists.loc[missing, "user_id"])]
    users, cats, brands = [], [], []
    for user, rows in tagged.groupby("user_id", sort=True):
        common = _common_behaviours(list(rows["tag_category_list"]), list(rows["tag_brand_list"]))
        if common:
            users.append(int(str(user)))
            cats.append(np.array([c for c, _ in common], dtype=np.int64))
            brands.append(np.array([b for _, b in common], dtype=np.int64))
    frames = [_history_rows(np.array(users, dtype=np.int64), cats, brands, "tag_history")]
    if beh is not None:
        first = beh.drop_duplicates(subset=250, keep="first")
        first = first[~first[250].isin(imp["user_id"].unique())]
        first = first.iloc[np.argsort(first[250].to_numpy(), kind="stable")]
        btag = first.iloc[:, 0:50].to_numpy(np.int64)
        keep = btag > 0
        bcats = [r[k] for r, k in zip(first.iloc[:, 50:100].to_numpy(np.int64), keep, strict=True)]
        bbrands = [r[k] for r, k in zip(first.iloc[:, 100:150].to_numpy(np.int64), keep, strict=True)]
        frames.append(_history_rows(first[250].to_numpy(np.int64), bcats, bbrands, "behavior_history"))
    positives = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(NEGATIVE_SEED)
    negatives = []
    for _ in range(NEGATIVES_PER_BEHAVIOUR):
        pick = rng.integers(0, len(positives), len(positives))
        neg = positives.copy()
        for col in ("item_id", "category_id", "shop_id"):
            neg[col] = positives[col].to_numpy()[pick]
        neg["click"] = np.int8(0)
        neg["source"] = "sampled_negative"
        negatives.append(neg)
    return pd.concat([positives, *negatives], ignore_index=True)


def _impression_ts(day: np.ndarray, user: np.ndarray) -> np.ndarray:
    """One ``ts`` per (day, user): a day's users spread evenly over it in file order.

    A user's impressions share their ``ts`` because their real order is unknown: no impression's
    click may then act as another's behaviour history (with an invented order, "an earlier click"
    marks the rows after a user's only click, which are unclicked: a within-user GAUC of 0.2-0.36).
    """
    ts = np.empty(len(day), dtype=np.int64)
    for d in np.unique(day):
        at = np.flatnonzero(day == d)
        _, first, group = np.unique(user[at], return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        ts[at] = DAY0_TS + d * DAY + (rank[group] * DAY) // len(first)
    return ts


def convert_frames(
    imp: pd.DataFrame, beh: pd.DataFrame | None, *, fold: int = 0, folds: int = FOLDS
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(super, train, test) frames from the two source tables; user fold ``fold`` is the test day."""
    if folds < 3 or not 0 <= fold < folds:
        raise DataError(f"--fold must be in 0..{folds - 1} and --folds at least 3 (got {fold} of {folds})")
    unknown = sorted(set(imp["pid"]) - set(SLOTS))
    if unknown:
        raise DataError(f"{CSV_NAME}: column 'pid' has unknown ad slot(s) {unknown}")
    user_fold = user_folds(imp["user_id"].to_numpy(), folds)
    day = np.where(
        user_fold == fold, TEST_DAY, np.where(user_fold == (fold + 1) % folds, VALIDATION_DAY, FIT_DAY)
    )
    rows = pd.DataFrame(
        {
            "user_id": imp["user_id"].astype(np.int64),
            "item_id": imp["adgroup_id"].astype(np.int64),
            "category_id": imp["cate_id"].astype(np.int64),
            "shop_id": imp["brand"].fillna(0).astype(np.int64),
            "ts": _impression_ts(day, imp["user_id"].to_numpy()),
            "click": imp["clk"].astype(np.int8),
            "conversion": (imp["buy"] > 0).astype(np.int8),
        }
    )
    is_test = day == TEST_DAY
    train = rows[~is_test].sort_values("ts", kind="stable").reset_index(drop=True)
    test = rows[is_test].reset_index(drop=True)
    super_df = _histories(imp, beh)
    super_df = super_df.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    return super_df[[*LOG_COLUMNS, "source"]], train[LOG_COLUMNS], test[LOG_COLUMNS]


def convert(
    src: str | os.PathLike[str], out: str | os.PathLike[str], *, fold: int = 0, folds: int = FOLDS
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Convert the Taobao folder ``src`` into ``out``/{super,train,test}.parquet and truth.json."""
    from contract.log import write_log

    imp, beh = _read_sources(Path(src))
    super_df, train, test = convert_frames(imp, beh, fold=fold, folds=folds)
    root = Path(out)
    paths = {
        "super": write_log(super_df, root / "super.parquet"),
        "train": write_log(train, root / "train.parquet"),
        "test": write_log(test, root / "test.parquet"),
    }
    truth = describe(super_df, train, test, behaviour_file=beh is not None, fold=fold, folds=folds)
    paths["truth"] = root / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    return paths, truth


def gauc_users(df: pd.DataFrame) -> np.ndarray:
    """Users with both clicked and unclicked rows in ``df`` (the users GAUC is defined on)."""
    g = df.groupby("user_id")["click"].agg(["min", "max"])
    return g.index[(g["min"] == 0) & (g["max"] == 1)].to_numpy()


def _stats(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": len(df),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
        "clicks": int(df["click"].sum()),
        "conversions": int(df["conversion"].sum()),
        "click_rate": round(float(df["click"].mean()), 5),
        "gauc_users": len(gauc_users(df)),
    }


def describe(
    super_df: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    behaviour_file: bool,
    fold: int = 0,
    folds: int = FOLDS,
) -> dict[str, Any]:
    sub_users = pd.concat([train["user_id"], test["user_id"]]).unique()
    super_users = set(super_df["user_id"].unique().tolist())
    clicks = super_df.loc[super_df["click"] == 1, "user_id"].value_counts()
    test_gauc = gauc_users(test)
    day = (train["ts"].to_numpy() - DAY0_TS) // DAY
    return {
        "dataset": "taobao",
        "credit": "Alibaba Tianchi data set 56 (Ali_Display_Ad_Click, Taobao display ads, 2017); samples "
        "from AlibabaPAI/Modelzoo-Data and PaddlePaddle/PaddleRec, Apache-2.0",
        "split": {
            "sub_domain": f"every ad impression, both ad slots {', '.join(SLOTS)}",
            "test": f"user fold {fold} of {folds} (seed {FOLD_SEED}) on day {TEST_DAY}; fold "
            f"{(fold + 1) % folds} is the last training day {VALIDATION_DAY} (validation slice)",
            "fold": fold,
            "folds": folds,
            "super_domain": "users' earlier shopping behaviours: per user, the (category, brand) pairs "
            "in the tag lists of all their impressions (so before every one of them; a missing list "
            "counts as empty); histories of "
            "behaviour-file users not in the csv",
            "behaviour_file_used": behaviour_file,
            "ts": "synthesised: one ts per (day, user), users spread in file order over their day; "
            "behaviours over days 0-4; day 0 = 2017-05-06 UTC",
            "labels": "click = clk, conversion = buy; no cart column",
            "negatives": f"{NEGATIVES_PER_BEHAVIOUR} sampled unclicked row(s) per behaviour, "
            f"seed {NEGATIVE_SEED}",
            "shop_id": "brand (0 = unknown)",
            "item_id of behaviour rows": f"{BRAND_ITEM_BASE} + brand",
        },
        "days": {
            "day0_ts": DAY0_TS,
            "super": [0, HISTORY_DAYS - 1],
            "train": [FIT_DAY, VALIDATION_DAY],
            "test": TEST_DAY,
        },
        "sizes": {"super": _stats(super_df), "train": _stats(train), "test": _stats(test)},
        "validation": {
            "rows": int((day == VALIDATION_DAY).sum()),
            "gauc_users": len(gauc_users(train[day == VALIDATION_DAY])),
        },
        "super_sources": {k: int(v) for k, v in super_df["source"].value_counts().sort_index().items()},
        "sub_users": len(sub_users),
        "sub_users_in_super": int(sum(u in super_users for u in sub_users.tolist())),
        "test_gauc_users_in_super": int(sum(u in super_users for u in test_gauc.tolist())),
        "super_clicks_of_test_users": {
            "mean": round(float(clicks.reindex(test["user_id"].unique(), fill_value=0).mean()), 3),
            "median": float(clicks.reindex(test["user_id"].unique(), fill_value=0).median()),
        },
    }
