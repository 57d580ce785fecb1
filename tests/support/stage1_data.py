"""A tiny impression log with a learnable signal, for Stage 1 unit tests (no synth dependency).

Each user prefers one category; an impression's click probability rises when the item is in that
category and with the item's own appeal. Conversion and cart happen on clicks only, likelier for the
preferred category. Popularity alone therefore ranks a user's impressions worse than a model that
learns the user-category affinity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from contract.log import write_log

DAY = 86_400
DAY0 = 19_000  # an arbitrary epoch day


def tiny_log(
    *,
    users: int = 60,
    items: int = 80,
    categories: int = 6,
    days: int = 4,
    rows_per_day: int = 1500,
    seed: int = 0,
    labels: tuple[str, ...] = ("conversion", "cart"),
    shop: bool = True,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pref = rng.integers(0, categories, users)
    item_cat = rng.integers(0, categories, items)
    appeal = rng.normal(0.0, 0.7, items)
    n = days * rows_per_day
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    day = np.repeat(np.arange(days), rows_per_day)
    ts = (DAY0 + day) * DAY + rng.integers(0, DAY, n)
    match = (item_cat[i] == pref[u]).astype(float)
    click = rng.random(n) < 1 / (1 + np.exp(-(-2.0 + 2.5 * match + appeal[i])))
    frame = {
        "user_id": u + 1000,
        "item_id": i + 5000,
        "category_id": item_cat[i] + 70,
        "ts": ts.astype(np.int64),
        "click": click.astype(np.int8),
    }
    for k, name in enumerate(labels):
        p = 1 / (1 + np.exp(-(-1.5 + 2.0 * match + 0.5 * appeal[i] - 0.3 * k)))
        frame[name] = (click & (rng.random(n) < p)).astype(np.int8)
    if shop:
        frame["shop_id"] = (i % 11) + 300
    df = pd.DataFrame(frame).sort_values("ts", kind="stable").reset_index(drop=True)
    return df


def write_tiny(path: Path, **kwargs: object) -> Path:
    return write_log(tiny_log(**kwargs), path)  # type: ignore[arg-type]


#: The tiny super-domain the export tests pre-train on.
EXPORT_SIZE = {"users": 40, "items": 60, "categories": 5, "days": 4, "rows_per_day": 800}


def pretrained_serving(root: Path) -> tuple[Path, Path]:
    """A tiny super-domain log under ``root`` and a ``serving`` extractor pre-trained on it."""
    from trainer.pretrain import PretrainConfig, pretrain

    path = write_tiny(root / "super.parquet", **EXPORT_SIZE)
    pretrain(
        PretrainConfig(
            super_path=path, out=root / "serving", strategy="serving", batch_size=200, progress=False
        )
    )
    return path, root / "serving"


def continued_world(root: Path) -> dict[str, Path]:
    """A base extractor on days 0-1 of a tiny log and its one-day continuation (day 2; each log's last
    day is held out), with their full bundles (keys ``root``, ``super``, ``base``, ``base_bundle``,
    ``cont``, ``full``). On the new day only half of the users are active (every user is, every day, in
    this tiny world otherwise)."""
    from contract.log import read_log
    from contract.schema import day_of
    from trainer.export import export
    from trainer.pretrain import PretrainConfig, pretrain

    df = read_log(write_tiny(root / "all.parquet", **EXPORT_SIZE))
    days = day_of(df["ts"].to_numpy())
    users = np.unique(df["user_id"].to_numpy())
    idle = np.isin(df["user_id"].to_numpy(), users[::2]) & (days == days.min() + 2)
    path = write_log(df[~idle].reset_index(drop=True), root / "super.parquet")
    df = read_log(path)
    days = day_of(df["ts"].to_numpy())
    first = write_log(df[days <= days.min() + 2], root / "first.parquet")

    def run(super_path: Path, out: Path, init: Path | None = None) -> None:
        pretrain(
            PretrainConfig(
                super_path=super_path, out=out, strategy="serving", batch_size=200, progress=False, init=init
            )
        )

    run(first, root / "base")
    run(path, root / "cont", init=root / "base")
    export(root / "base", root / "base_bundle", progress=False)
    export(root / "cont", root / "full", progress=False)
    return {
        "root": root,
        "super": path,
        "base": root / "base",
        "base_bundle": root / "base_bundle",
        "cont": root / "cont",
        "full": root / "full",
    }
