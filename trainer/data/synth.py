"""``keep data synth``: a ground-truth world in which KEEP's premise holds (see :mod:`synth_model`).

Day layout, like the paper (§6.1): super-domain days ``0 .. P+T-1`` (P pre-training days, then the T
days it shares with the sub-domain), sub-domain training days ``P .. P+T-1`` and one test day
``P+T`` (test.parquet). Day 0 starts 2021-12-13 UTC.

Generated day by day and vectorised with numpy (the medium scale, 5.4M super rows, in well under two
minutes and a few hundred MB). Every random draw comes from a ``SeedSequence`` child keyed by
(day, domain), so the same seed gives the same bytes in every file.

Public API: :func:`generate` → :class:`World`, :func:`write_world`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.data.synth_model import (
    CATEGORY_ID_BASE,
    DAY0_TS,
    ITEM_ID_BASE,
    SCALES,
    SHOP_ID_BASE,
    USER_ID_BASE,
    CategorySampler,
    Latents,
    ScaleConfig,
    WorldParams,
    calibrate_offset,
    drift,
    make_latents,
    sigmoid,
)

SUPER, SUB = 0, 1
MAX_SESSIONS = 8
SECONDS_PER_DAY = 86_400
#: The paper's Table 7 user groups by super-domain click count.
CLICK_GROUPS = ((0, 50), (50, 150), (150, 300), (300, None))
LOG_COLUMNS = (
    "user_id",
    "item_id",
    "category_id",
    "shop_id",
    "session_id",
    "ts",
    "click",
    "conversion",
    "cart",
)


@dataclass
class World:
    """The four outputs, plus the test day's ground-truth logit parts (not written to the files)."""

    super: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    truth: dict[str, Any]
    #: Per test row: ``logit`` (the true click logit), ``interest`` and ``item_bias`` (its parts) and
    #: ``super_logit`` (what the super-domain's click model would say about the row).
    test_oracle: dict[str, np.ndarray]


@dataclass
class _DomainState:
    sampler: CategorySampler
    click_offset: float | None = None
    cv_offset: float | None = None
    cart_offset: float | None = None


def _sessions(rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (users' rows contiguous): session index within the user-day, and ts offset in the day."""
    n_users = len(counts)
    k = np.clip(
        1 + rng.poisson(np.maximum(counts - 1, 0) / 12.0), 1, np.minimum(np.maximum(counts, 1), MAX_SESSIONS)
    )
    row_user = np.repeat(np.arange(n_users), counts)
    first_row = np.concatenate(([0], np.cumsum(counts)[:-1]))
    j = np.arange(len(row_user)) - first_row[row_user]
    sess = (j * k[row_user]) // np.maximum(counts[row_user], 1)
    # Session start times: k uniform draws per user, sorted within the user.
    sess_user = np.repeat(np.arange(n_users), k)
    starts = rng.integers(0, SECONDS_PER_DAY - 4 * 3_600, len(sess_user))
    starts = starts[np.lexsort((starts, sess_user))]
    first_sess = np.concatenate(([0], np.cumsum(k)[:-1]))
    global_sess = first_sess[row_user] + sess
    pos = np.arange(len(row_user)) - np.searchsorted(global_sess, global_sess, side="left")
    offset = starts[global_sess] + 30 * pos + rng.integers(0, 30, len(row_user))
    return sess, np.minimum(offset, SECONDS_PER_DAY - 1), global_sess


def _day(
    rng: np.random.Generator,
    domain: int,
    day: int,
    users: np.ndarray,
    rows_per_day: int,
    interest: np.ndarray,
    lat: Latents,
    p: WorldParams,
    state: _DomainState,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One domain-day of impressions with labels; returns (columns, oracle parts)."""
    act = lat.user_activity[users] + (p.super_activity_floor if domain == SUPER else 0.0)
    counts = rng.poisson(rows_per_day * act / act.sum())
    sess, offset, global_sess = _sessions(rng, counts)
    row_user = np.repeat(users, counts)
    n = len(row_user)
    # Scene per session (the sub-domain is one scene: the ad slot).
    if domain == SUPER:
        shares = np.array([s.share for s in p.scenes])
        scene_of_sess = rng.choice(
            len(p.scenes), size=int(global_sess.max(initial=-1)) + 1, p=shares / shares.sum()
        )
        scene = scene_of_sess[global_sess]
        targeting = np.array([s.targeting for s in p.scenes])[scene]
        scene_offset = np.array([s.offset for s in p.scenes])[scene]
    else:
        scene = np.full(n, len(p.scenes), dtype=np.int64)
        targeting = np.full(n, p.ad_targeting)
        scene_offset = np.zeros(n)
    # Items: targeted rows draw from one of the user's favourite categories, the rest from the pool.
    targeted = rng.random(n) < targeting
    pick = (rng.random(n)[:, None] > lat.user_fav_cum[row_user]).sum(axis=1)
    fav_cat = lat.user_fav[row_user, np.minimum(pick, lat.user_fav.shape[1] - 1)]
    targeted &= state.sampler.has[fav_cat]
    item = state.sampler.anywhere(rng, n)
    item[targeted] = state.sampler.in_categories(rng, fav_cat[targeted])
    cat = lat.item_category[item]
    affinity = np.einsum("nd,nd->n", interest[row_user], lat.item_vec[item])
    shop_q = lat.shop_quality[lat.item_shop[item]]
    if domain == SUPER:
        interest_part = p.super_interest_weight * affinity
        item_part = p.super_popularity_weight * lat.item_log_pop[item] + shop_q + scene_offset
        ctr, cv_rate, cart_rate = p.super_ctr, p.super_cv_per_click, p.super_cart_per_click
    else:
        interest_part = p.sub_interest_weight * affinity
        item_part = (
            p.sub_popularity_weight * lat.item_log_pop[item]
            + lat.ad_quality[item]
            + lat.ad_category_bias[cat]
            + shop_q
        )
        ctr, cv_rate, cart_rate = p.sub_ctr, p.sub_cv_per_click, p.sub_cart_per_click
    raw = interest_part + item_part
    if state.click_offset is None:
        state.click_offset = calibrate_offset(raw, ctr)
    logit = raw + state.click_offset
    click = rng.random(n) < sigmoid(logit)
    # Conversion and add-to-cart happen after a click; both prefer items close to the interest.
    cv_raw = 2.0 * affinity + 2.0 * shop_q
    cart_raw = 1.5 * affinity + 0.3 * lat.item_log_pop[item]
    if state.cv_offset is None or state.cart_offset is None:
        state.cv_offset = calibrate_offset(cv_raw[click], cv_rate)
        state.cart_offset = calibrate_offset(cart_raw[click], cart_rate)
    conversion = click & (rng.random(n) < sigmoid(cv_raw + state.cv_offset))
    cart = click & (rng.random(n) < sigmoid(cart_raw + state.cart_offset))
    session_id = ((day * 2 + domain) * len(lat.user_activity) + row_user) * MAX_SESSIONS + sess
    cols = {
        "user_id": USER_ID_BASE + row_user,
        "item_id": ITEM_ID_BASE + item,
        "category_id": CATEGORY_ID_BASE + cat,
        "shop_id": SHOP_ID_BASE + lat.item_shop[item],
        "session_id": session_id.astype(np.int64),
        "ts": (DAY0_TS + day * SECONDS_PER_DAY + offset).astype(np.int64),
        "click": click.astype(np.int8),
        "conversion": conversion.astype(np.int8),
        "cart": cart.astype(np.int8),
        "scene": scene.astype(np.int8),
    }
    super_logit = (
        p.super_interest_weight * affinity + p.super_popularity_weight * lat.item_log_pop[item] + shop_q
    )
    oracle = {"logit": logit, "interest": interest_part, "item_bias": item_part, "super_logit": super_logit}
    order = np.lexsort((cols["user_id"], cols["ts"]))
    return {k: v[order] for k, v in cols.items()}, {k: v[order] for k, v in oracle.items()}


def _frame(chunks: list[dict[str, np.ndarray]], with_scene: bool) -> pd.DataFrame:
    names = [*LOG_COLUMNS, "scene"] if with_scene else list(LOG_COLUMNS)
    return pd.DataFrame({c: np.concatenate([ch[c] for ch in chunks]) for c in names})


def generate(scale: str | ScaleConfig = "small", seed: int = 0, *, progress: bool = True) -> World:
    """Generate the world of ``scale`` (``tiny``, ``small``, ``medium`` or a :class:`ScaleConfig`)."""
    from tqdm import tqdm

    cfg = SCALES[scale] if isinstance(scale, str) else scale
    params = WorldParams()
    root = np.random.SeedSequence(seed)
    latent_seq, drift_seq, *day_seqs = root.spawn(2 + 2 * cfg.total_days)
    lat = make_latents(np.random.default_rng(latent_seq), cfg, params)
    all_items = np.arange(cfg.items)
    ads = np.flatnonzero(lat.is_ad)
    states = {
        SUPER: _DomainState(
            CategorySampler(all_items, lat.item_category, lat.item_popularity, cfg.categories)
        ),
        SUB: _DomainState(
            CategorySampler(
                ads,
                lat.item_category[ads],
                lat.item_popularity[ads] ** params.ad_exposure_power,
                cfg.categories,
            )
        ),
    }
    users_super = np.arange(cfg.users)
    users_sub = np.flatnonzero(lat.is_sub_user)
    drift_rng = np.random.default_rng(drift_seq)
    interest = lat.interest0
    super_chunks: list[dict[str, np.ndarray]] = []
    train_chunks: list[dict[str, np.ndarray]] = []
    test_chunks: list[dict[str, np.ndarray]] = []
    oracle: dict[str, np.ndarray] = {}
    bar = tqdm(
        total=cfg.super_days + cfg.train_days + 1, desc=f"synth {cfg.name}", unit="day", disable=not progress
    )
    for day in range(cfg.total_days):
        if day > 0:
            interest = drift(drift_rng, interest, params.drift_per_day)
        if day < cfg.super_days:
            rng = np.random.default_rng(day_seqs[2 * day + SUPER])
            cols, _ = _day(
                rng, SUPER, day, users_super, cfg.super_rows_per_day, interest, lat, params, states[SUPER]
            )
            super_chunks.append(cols)
            bar.update()
        if day >= cfg.pretrain_days:
            rng = np.random.default_rng(day_seqs[2 * day + SUB])
            cols, parts = _day(
                rng, SUB, day, users_sub, cfg.sub_rows_per_day, interest, lat, params, states[SUB]
            )
            (test_chunks if day == cfg.super_days else train_chunks).append(cols)
            if day == cfg.super_days:
                oracle = parts
            bar.update()
    bar.close()
    super_df = _frame(super_chunks, with_scene=True)
    train_df = _frame(train_chunks, with_scene=False)
    test_df = _frame(test_chunks, with_scene=False)
    truth = _truth(cfg, params, seed, super_df, train_df, test_df, oracle, states)
    return World(super=super_df, train=train_df, test=test_df, truth=truth, test_oracle=oracle)


def _log_stats(df: pd.DataFrame) -> dict[str, Any]:
    clicks = int(df["click"].sum())
    return {
        "rows": len(df),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
        "categories": int(df["category_id"].nunique()),
        "clicks": clicks,
        "conversions": int(df["conversion"].sum()),
        "carts": int(df["cart"].sum()),
        "click_rate": round(clicks / max(len(df), 1), 5),
        "conversion_per_click": round(int(df["conversion"].sum()) / max(clicks, 1), 5),
        "cart_per_click": round(int(df["cart"].sum()) / max(clicks, 1), 5),
    }


def super_click_counts(super_df: pd.DataFrame, users: Any) -> np.ndarray:
    """Super-domain clicks of each of ``users`` (0 for users without super rows)."""
    counts = super_df.loc[super_df["click"] == 1, "user_id"].value_counts()
    return counts.reindex(pd.Index(np.asarray(users)), fill_value=0).to_numpy(np.int64)


def _truth(
    cfg: ScaleConfig,
    params: WorldParams,
    seed: int,
    super_df: pd.DataFrame,
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    oracle: dict[str, np.ndarray],
    states: dict[int, _DomainState],
) -> Any:
    from trainer.metrics import gauc

    sub_rows = len(train_df) + len(test_df)
    sub_users = pd.concat([train_df["user_id"], test_df["user_id"]]).unique()
    clicks = super_click_counts(super_df, np.sort(sub_users))
    groups = {}
    for lo, hi in CLICK_GROUPS:
        name = f"{lo}-{hi}" if hi is not None else f">{lo}"
        groups[name] = int(((clicks >= lo) & (clicks < (hi if hi is not None else np.inf))).sum())
    y, u = test_df["click"].to_numpy(), test_df["user_id"].to_numpy()
    day = lambda i: DAY0_TS + i * SECONDS_PER_DAY  # noqa: E731
    truth = {
        "generator": "keep synth v1",
        "scale": cfg.name,
        "seed": seed,
        "scale_config": asdict(cfg),
        "params": asdict(params),
        "calibration": {
            "super": {k: getattr(states[SUPER], k) for k in ("click_offset", "cv_offset", "cart_offset")},
            "sub": {k: getattr(states[SUB], k) for k in ("click_offset", "cv_offset", "cart_offset")},
        },
        "days": {
            "day0_ts": DAY0_TS,
            "super": [0, cfg.super_days - 1],
            "pretrain": [0, cfg.pretrain_days - 1],
            "train": [cfg.pretrain_days, cfg.super_days - 1],
            "test": cfg.super_days,
            "super_ts": [day(0), day(cfg.super_days) - 1],
            "train_ts": [day(cfg.pretrain_days), day(cfg.super_days) - 1],
            "test_ts": [day(cfg.super_days), day(cfg.super_days + 1) - 1],
        },
        "sizes": {"super": _log_stats(super_df), "train": _log_stats(train_df), "test": _log_stats(test_df)},
        "ratios": {
            "impressions_super_per_sub": round(len(super_df) / max(sub_rows, 1), 3),
            "users_super_per_sub": round(super_df["user_id"].nunique() / max(len(sub_users), 1), 3),
        },
        "super_clicks_of_sub_users": {
            "mean": round(float(clicks.mean()), 3),
            "quantiles": {
                str(q): float(np.quantile(clicks, q)) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
            },
            "groups": groups,
            # The paper's thresholds are for billions of rows; these split this world's sub users
            # into four buckets of about equal size (lower bounds of super-domain clicks).
            "quartile_group_bounds": [int(b) for b in np.quantile(clicks, [0.0, 0.25, 0.5, 0.75])],
        },
        "oracle_test_gauc": {
            "true_logit": round(gauc(u, y, oracle["logit"]), 5),
            "interest_only": round(gauc(u, y, oracle["interest"]), 5),
            "item_bias_only": round(gauc(u, y, oracle["item_bias"]), 5),
            "super_click_model": round(gauc(u, y, oracle["super_logit"]), 5),
        },
    }
    # Plain JSON types (tuples → lists), so the in-memory truth equals truth.json.
    return json.loads(json.dumps(truth))


def write_world(world: World, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``super/train/test.parquet`` and ``truth.json`` under ``out`` (same world, same bytes)."""
    from contract.log import write_log

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "super": write_log(world.super, root / "super.parquet"),
        "train": write_log(world.train, root / "train.parquet"),
        "test": write_log(world.test, root / "test.parquet"),
    }
    truth = root / "truth.json"
    truth.write_text(json.dumps(world.truth, indent=2, sort_keys=True) + "\n")
    paths["truth"] = truth
    return paths
