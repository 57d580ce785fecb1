"""``keep data synth``: a ground-truth world in which KEEP's premise holds (see :mod:`synth_model`).

Day layout, like the paper (§6.1): super-domain days ``0 .. P+T-1`` (P pre-training days, then the T
days it shares with the sub-domain), sub-domain training days ``P .. P+T-1`` and one test day
``P+T`` (test.parquet). Day 0 starts 2021-12-13 UTC.

Generated day by day and vectorised with numpy (the medium scale, 5.4M super rows, in well under two
minutes and a few hundred MB). Every random draw comes from a ``SeedSequence`` child keyed by
(day, domain), so the same seed gives the same bytes in every file.

Public API: :func:`generate` → :class:`World`, :func:`write_world`; :func:`write_world_partitioned`
writes the same world day by day as hive day partitions (``super/day=YYYY-MM-DD/part-0.parquet``), in
memory bounded by one day's rows (the only way to write the ``large`` scale).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from trainer.data.synth_model import (
    CATEGORY_ID_BASE,
    DAY0_TS,
    DEFAULT_WORLD,
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
    world_params,
)
from trainer.data.synth_truth import LogTally, world_truth

SUPER, SUB = 0, 1
MAX_SESSIONS = 8
SECONDS_PER_DAY = 86_400
#: Rows per block of the per-row dot products (bounds the ``[rows, dim]`` gathers of a big day).
_ROW_BLOCK = 1 << 20
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
    affinity = _affinity(interest, row_user, lat.item_vec, item)
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


def _affinity(
    interest: np.ndarray, row_user: np.ndarray, item_vec: np.ndarray, item: np.ndarray
) -> np.ndarray:
    """``<interest[row_user], item_vec[item]>`` per row, in blocks (row by row the same numbers)."""
    out = np.empty(len(row_user), dtype=np.float64)
    for lo in range(0, len(row_user), _ROW_BLOCK):
        hi = lo + _ROW_BLOCK
        out[lo:hi] = np.einsum("nd,nd->n", interest[row_user[lo:hi]], item_vec[item[lo:hi]])
    return out


def _frame(chunks: list[dict[str, np.ndarray]], with_scene: bool) -> pd.DataFrame:
    names = [*LOG_COLUMNS, "scene"] if with_scene else list(LOG_COLUMNS)
    return pd.DataFrame({c: np.concatenate([ch[c] for ch in chunks]) for c in names})


@dataclass(frozen=True)
class DayChunk:
    """One domain-day of the world: ``part`` is ``super``, ``train`` or ``test``."""

    part: str
    day: int
    cols: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]


class _WorldDays:
    """The world's days in order (super then sub per day), each drawn from its own seed child."""

    def __init__(self, scale: str | ScaleConfig, seed: int, world: str | WorldParams = DEFAULT_WORLD) -> None:
        self.cfg = SCALES[scale] if isinstance(scale, str) else scale
        self.seed = seed
        self.world, self.params = world_params(world)
        root = np.random.SeedSequence(seed)
        latent_seq, self.drift_seq, *self.day_seqs = root.spawn(2 + 2 * self.cfg.total_days)
        self.lat = make_latents(np.random.default_rng(latent_seq), self.cfg, self.params)
        lat, cfg = self.lat, self.cfg
        ads = np.flatnonzero(lat.is_ad)
        self.states = {
            SUPER: _DomainState(
                CategorySampler(np.arange(cfg.items), lat.item_category, lat.item_popularity, cfg.categories)
            ),
            SUB: _DomainState(
                CategorySampler(
                    ads,
                    lat.item_category[ads],
                    lat.item_popularity[ads] ** self.params.ad_exposure_power,
                    cfg.categories,
                )
            ),
        }
        self.tallies = {
            name: LogTally(cfg.users, cfg.items, cfg.categories) for name in ("super", "train", "test")
        }

    def __iter__(self) -> Iterator[DayChunk]:
        cfg, lat, params = self.cfg, self.lat, self.params
        users_super = np.arange(cfg.users)
        users_sub = np.flatnonzero(lat.is_sub_user)
        drift_rng = np.random.default_rng(self.drift_seq)
        interest = lat.interest0
        for day in range(cfg.total_days):
            if day > 0:
                interest = drift(drift_rng, interest, params.drift_per_day)
            if day < cfg.super_days:
                rng = np.random.default_rng(self.day_seqs[2 * day + SUPER])
                state = self.states[SUPER]
                cols, parts = _day(
                    rng, SUPER, day, users_super, cfg.super_rows_per_day, interest, lat, params, state
                )
                self.tallies["super"].add(cols)
                yield DayChunk("super", day, cols, parts)
                del cols, parts  # not alive while the next day is drawn
            if day >= cfg.pretrain_days:
                rng = np.random.default_rng(self.day_seqs[2 * day + SUB])
                cols, parts = _day(
                    rng, SUB, day, users_sub, cfg.sub_rows_per_day, interest, lat, params, self.states[SUB]
                )
                part = "test" if day == cfg.super_days else "train"
                self.tallies[part].add(cols)
                yield DayChunk(part, day, cols, parts)
                del cols, parts

    def truth(self, test: DayChunk) -> Any:
        calibration = {
            name: {k: getattr(self.states[d], k) for k in ("click_offset", "cv_offset", "cart_offset")}
            for name, d in (("super", SUPER), ("sub", SUB))
        }
        return world_truth(
            self.cfg, self.params, self.seed, self.tallies, test.cols, test.oracle, calibration, self.world
        )


def _bar(cfg: ScaleConfig, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=cfg.super_days + cfg.train_days + 1, desc=f"synth {cfg.name}", unit="day", disable=not progress
    )


def generate(
    scale: str | ScaleConfig = "small",
    seed: int = 0,
    *,
    world: str | WorldParams = DEFAULT_WORLD,
    progress: bool = True,
) -> World:
    """Generate the world of ``scale`` (``tiny``, ``small``, ``medium`` or a :class:`ScaleConfig`)
    in memory (``large`` only as day partitions: :func:`write_world_partitioned`). ``world`` names a
    parameter setting of :data:`WORLDS` (``paper``: calibrated to the paper's lifts, the default;
    ``easy``: a strong, easily transferred signal) or is a :class:`WorldParams`."""
    if isinstance(scale, str) and scale in PARTITIONED_ONLY:
        raise ValueError(f"scale {scale!r} is written as day partitions only (write_world_partitioned)")
    days = _WorldDays(scale, seed, world)
    chunks: dict[str, list[dict[str, np.ndarray]]] = {"super": [], "train": [], "test": []}
    test: DayChunk | None = None
    with _bar(days.cfg, progress) as bar:
        for chunk in days:
            chunks[chunk.part].append(chunk.cols)
            if chunk.part == "test":
                test = chunk
            bar.update()
    assert test is not None
    return World(
        super=_frame(chunks["super"], with_scene=True),
        train=_frame(chunks["train"], with_scene=False),
        test=_frame(chunks["test"], with_scene=False),
        truth=days.truth(test),
        test_oracle=test.oracle,
    )


#: Scales too large for one in-memory world.
PARTITIONED_ONLY = ("large",)


def super_click_counts(super_df: pd.DataFrame, users: Any) -> np.ndarray:
    """Super-domain clicks of each of ``users`` (0 for users without super rows)."""
    counts = super_df.loc[super_df["click"] == 1, "user_id"].value_counts()
    return counts.reindex(pd.Index(np.asarray(users)), fill_value=0).to_numpy(np.int64)


def day_partition(day: int) -> str:
    """``day=YYYY-MM-DD``: the hive partition of synthetic day ``day``."""
    date = dt.datetime.fromtimestamp(DAY0_TS + day * SECONDS_PER_DAY, tz=dt.UTC).date()
    return f"day={date.isoformat()}"


def write_world_partitioned(
    scale: str | ScaleConfig,
    out: str | os.PathLike[str],
    seed: int = 0,
    *,
    world: str | WorldParams = DEFAULT_WORLD,
    progress: bool = True,
) -> tuple[dict[str, Path], Any]:
    """Write the world of ``scale`` as ``super/`` and ``train/`` datasets of day partitions, the test
    day as ``test.parquet`` and ``truth.json``; one day in memory at a time. Returns (paths, truth).

    For the scales :func:`generate` can hold, the rows are those of :func:`write_world` (the datasets
    read back equal its files) and the truth is the same."""
    from contract.log import write_log

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    days = _WorldDays(scale, seed, world)
    test: DayChunk | None = None
    with _bar(days.cfg, progress) as bar:
        for chunk in days:
            names = [*LOG_COLUMNS, "scene"] if chunk.part == "super" else list(LOG_COLUMNS)
            frame = pd.DataFrame({c: chunk.cols[c] for c in names})
            if chunk.part == "test":
                write_log(frame, root / "test.parquet")
                test = chunk
            else:
                write_log(frame, root / chunk.part / day_partition(chunk.day) / "part-0.parquet")
            del frame, chunk  # one day alive at a time: not this one while the next is drawn
            pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed pages otherwise
            bar.update()
    assert test is not None
    truth = days.truth(test)
    paths = {"super": root / "super", "train": root / "train", "test": root / "test.parquet"}
    paths["truth"] = _write_truth(truth, root)
    return paths, truth


def _write_truth(truth: Any, root: Path) -> Path:
    path = root / "truth.json"
    path.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    return path


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
    paths["truth"] = _write_truth(world.truth, root)
    return paths
