"""``truth.json`` of a synthetic world, tallied day by day (so a world written as day partitions never
has to be in memory at once, and an in-memory world gets the very same numbers).

Ids are dense (``*_ID_BASE + index``), so the distinct users, items and categories of a log are
boolean masks and the super-domain clicks per user one ``bincount``: memory grows with the world's
catalogue, never with its rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trainer.data.synth_model import (
    CATEGORY_ID_BASE,
    DAY0_TS,
    ITEM_ID_BASE,
    USER_ID_BASE,
    ScaleConfig,
    WorldParams,
)

SECONDS_PER_DAY = 86_400
#: The paper's Table 7 user groups by super-domain click count.
CLICK_GROUPS = ((0, 50), (50, 150), (150, 300), (300, None))


@dataclass
class LogTally:
    """Running sizes of one log (super, train or test) of a world with ``users``/``items``/``categories``."""

    users: int
    items: int
    categories: int
    rows: int = 0
    clicks: int = 0
    conversions: int = 0
    carts: int = 0
    seen_users: np.ndarray = field(init=False, repr=False)
    seen_items: np.ndarray = field(init=False, repr=False)
    seen_categories: np.ndarray = field(init=False, repr=False)
    #: Clicks per user (0-based index), for the super-domain's activity groups.
    user_clicks: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.seen_users = np.zeros(self.users, dtype=bool)
        self.seen_items = np.zeros(self.items, dtype=bool)
        self.seen_categories = np.zeros(self.categories, dtype=bool)
        self.user_clicks = np.zeros(self.users, dtype=np.int64)

    def add(self, cols: dict[str, np.ndarray]) -> None:
        user = cols["user_id"] - USER_ID_BASE
        click = cols["click"].astype(bool)
        self.rows += len(user)
        self.clicks += int(click.sum())
        self.conversions += int(cols["conversion"].sum())
        self.carts += int(cols["cart"].sum())
        self.seen_users[user] = True
        self.seen_items[cols["item_id"] - ITEM_ID_BASE] = True
        self.seen_categories[cols["category_id"] - CATEGORY_ID_BASE] = True
        self.user_clicks += np.bincount(user[click], minlength=self.users)

    def stats(self) -> dict[str, Any]:
        clicks = self.clicks
        return {
            "rows": self.rows,
            "users": int(self.seen_users.sum()),
            "items": int(self.seen_items.sum()),
            "categories": int(self.seen_categories.sum()),
            "clicks": clicks,
            "conversions": self.conversions,
            "carts": self.carts,
            "click_rate": round(clicks / max(self.rows, 1), 5),
            "conversion_per_click": round(self.conversions / max(clicks, 1), 5),
            "cart_per_click": round(self.carts / max(clicks, 1), 5),
        }


def world_truth(
    cfg: ScaleConfig,
    params: WorldParams,
    seed: int,
    tallies: dict[str, LogTally],
    test_cols: dict[str, np.ndarray],
    oracle: dict[str, np.ndarray],
    calibration: dict[str, dict[str, float | None]],
    world: str = "custom",
) -> Any:
    """The world's ``truth.json`` from the tallies of ``super``/``train``/``test`` and the test day."""
    from trainer.metrics import gauc

    sup, train, test = tallies["super"], tallies["train"], tallies["test"]
    sub_rows = train.rows + test.rows
    sub_users = np.flatnonzero(train.seen_users | test.seen_users)
    clicks = sup.user_clicks[sub_users]
    groups = {}
    for lo, hi in CLICK_GROUPS:
        name = f"{lo}-{hi}" if hi is not None else f">{lo}"
        groups[name] = int(((clicks >= lo) & (clicks < (hi if hi is not None else np.inf))).sum())
    y, u = test_cols["click"], test_cols["user_id"]
    day = lambda i: DAY0_TS + i * SECONDS_PER_DAY  # noqa: E731
    truth = {
        "generator": "keep synth v1",
        "scale": cfg.name,
        "seed": seed,
        "world": world,
        "scale_config": asdict(cfg),
        "params": asdict(params),
        "calibration": calibration,
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
        "sizes": {name: tallies[name].stats() for name in ("super", "train", "test")},
        "ratios": {
            "impressions_super_per_sub": round(sup.rows / max(sub_rows, 1), 3),
            "users_super_per_sub": round(int(sup.seen_users.sum()) / max(len(sub_users), 1), 3),
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


def read_oracle(test_path: Any, test_rows: int) -> dict[str, Any] | None:
    """The true click model's test GAUC from the ``truth.json`` beside ``test_path`` (a synthetic
    world's), or None: no truth.json, none with an oracle, or one of another world (its test-day row
    count differs from ``test_rows``). Every table of ``keep experiment`` shows the gap to it."""
    from pathlib import Path

    path = Path(test_path).parent / "truth.json"
    if not path.is_file():
        return None
    try:
        truth = json.loads(path.read_text())
        oracle = truth["oracle_test_gauc"]
        if int(truth["sizes"]["test"]["rows"]) != int(test_rows):
            return None
        return {
            "gauc": float(oracle["true_logit"]),
            "parts": {k: float(v) for k, v in oracle.items()},
            "truth": str(path),
            "world": truth.get("world", "custom"),
            "synth_seed": truth.get("seed"),
        }
    except (ValueError, KeyError, TypeError):
        return None
