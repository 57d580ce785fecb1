"""``keep export``: turn a ``serving`` extractor checkpoint into a knowledge bundle (paper §5.2).

Entries: one K̂_u per known user, one K̂_i per known item, one K̂_uc per (user, category) pair that
occurs in the super-domain log up to the end of the training window: N_u + N_i + N_uc rows, computed in
batches; nothing is ever evaluated per (user, item) pair.

Histories: a user's behaviour sequence is their last 50 clicks up to the end of the extractor's
training window (the held-out day is not included), the state GKC serves until the next version. A
(user, category) pair reuses its user's window, so the history index is built once, per user.
Users and items outside the extractor's vocabulary (first seen after an ``--init`` continuation kept
the old vocabulary) are not exported; GKC answers "not found" for them and the plug-in sees zeros.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from gkc import bundle as gkc_bundle
from services.errors import Conflict, InvalidArgument
from trainer.data.readers import read_log
from trainer.data.schema import SECONDS_PER_DAY, day_of
from trainer.data.sequences import HistoryIndex
from trainer.data.vocab import OOV, PAD, RESERVED
from trainer.models.batch import FeatureBatch, id_batch
from trainer.models.checkpoint import LoadedExtractor, load_extractor
from trainer.models.towers import ServingExtractor


@dataclass
class ExportStats:
    users: int = 0
    items: int = 0
    user_categories: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def users_per_s(self) -> float:
        return self.users / max(self.seconds.get("users", 0.0), 1e-9)


def _run_batched(
    fn: Callable[[FeatureBatch], torch.Tensor],
    make: Callable[[np.ndarray], FeatureBatch],
    n: int,
    dim: int,
    batch_size: int,
    bar: tqdm,
) -> np.ndarray:
    """``fn`` over ``n`` entries in batches, written into one preallocated ``[n, dim]`` array."""
    out = np.empty((n, dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            sel = np.arange(start, min(start + batch_size, n))
            out[sel] = fn(make(sel)).numpy()
            bar.update(len(sel))
    return out


def _item_features(df: pd.DataFrame, ext: LoadedExtractor, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each known item's category and shop index, from its last row in the log (OOV if unseen)."""
    last = df.drop_duplicates("item_id", keep="last")
    idx = ext.vocabs.item.lookup(last["item_id"].to_numpy()) - RESERVED
    keep = idx >= 0
    category = np.full(n_items, OOV, dtype=np.int64)
    shop = np.full(n_items, PAD, dtype=np.int64)
    category[idx[keep]] = ext.vocabs.category.lookup(last["category_id"].to_numpy()[keep])
    if ext.vocabs.shop is not None and "shop_id" in last.columns:
        shop[idx[keep]] = ext.vocabs.shop.lookup(last["shop_id"].to_numpy()[keep])
    return category, shop


def export(
    extractor: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    super_path: str | os.PathLike[str] | None = None,
    batch_size: int = 4096,
    progress: bool = True,
) -> tuple[Path, ExportStats]:
    """Write the bundle for ``extractor`` to ``out``; returns its path and timings."""
    ext = load_extractor(extractor)
    _check_exportable(ext)
    if Path(out).exists():
        raise InvalidArgument(f"{out} already exists; refusing to overwrite a bundle")
    source = Path(super_path or ext.config["data"]["super"])
    return export_loaded(ext, read_log(source), out, source=source, batch_size=batch_size, progress=progress)


def _check_exportable(ext: LoadedExtractor) -> None:
    model = ext.model
    if not isinstance(model, ServingExtractor):
        raise InvalidArgument(
            f"{ext.path} was trained with --strategy {ext.strategy}; export needs the serving forms "
            "(retrain with --strategy serving: decomposition + degeneration)"
        )
    if ext.progress.get("state") != "done":
        raise Conflict(f"{ext.path}: pre-training has not completed; rerun keep pretrain to resume it")


def export_loaded(
    ext: LoadedExtractor,
    df: pd.DataFrame,
    out: str | os.PathLike[str],
    *,
    source: Path,
    batch_size: int = 4096,
    progress: bool = True,
) -> tuple[Path, ExportStats]:
    """:func:`export` for an extractor already in memory and its super-domain log (benchmarks)."""
    _check_exportable(ext)
    model = ext.model
    assert isinstance(model, ServingExtractor)
    first_day, last_day = ext.window
    df = df[day_of(df["ts"].to_numpy()) <= last_day].reset_index(drop=True)
    vocabs = ext.vocabs
    max_len = model.cfg.max_len

    user_keys = vocabs.user.keys
    user_index = np.arange(RESERVED, RESERVED + len(user_keys), dtype=np.int64)
    end_ts = np.full(len(user_keys), (last_day + 1) * SECONDS_PER_DAY, dtype=np.int64)
    history = HistoryIndex.build(
        vocabs.user.lookup(df["user_id"].to_numpy()),
        df["ts"].to_numpy(np.int64),
        df["click"].to_numpy(),
        {
            "item": vocabs.item.lookup(df["item_id"].to_numpy()),
            "category": vocabs.category.lookup(df["category_id"].to_numpy()),
        },
        max_len=max_len,
        rows_user=user_index,
        rows_ts=end_ts,
    )
    pairs = df[["user_id", "category_id"]].drop_duplicates()
    pair_user = vocabs.user.lookup(pairs["user_id"].to_numpy())
    known = pair_user >= RESERVED
    pairs, pair_user = pairs[known], pair_user[known]
    pair_cat = vocabs.category.lookup(pairs["category_id"].to_numpy())
    item_cat, item_shop = _item_features(df, ext, len(vocabs.item.keys))
    item_index = np.arange(RESERVED, RESERVED + len(vocabs.item.keys), dtype=np.int64)

    stats = ExportStats(users=len(user_keys), items=len(item_index), user_categories=len(pairs))
    total = stats.users + stats.items + stats.user_categories
    bar = tqdm(
        total=total,
        unit="entries",
        unit_scale=True,
        desc="export",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )

    def user_rows(sel: np.ndarray) -> FeatureBatch:
        return id_batch(
            user=user_index[sel],
            hist_item=history.gather(sel, "item"),
            hist_category=history.gather(sel, "category"),
            max_len=max_len,
        )

    def item_rows(sel: np.ndarray) -> FeatureBatch:
        return id_batch(item=item_index[sel], shop=item_shop[sel], category=item_cat[sel], max_len=max_len)

    def pair_rows(sel: np.ndarray) -> FeatureBatch:
        hist_rows = pair_user[sel] - RESERVED  # the pair's user's row in the history index
        return id_batch(
            user=pair_user[sel],
            category=pair_cat[sel],
            hist_item=history.gather(hist_rows, "item"),
            hist_category=history.gather(hist_rows, "category"),
            max_len=max_len,
        )

    blocks: dict[str, np.ndarray] = {}
    try:
        dims = model.block_dims()
        for name, fn, make, n, dim in (
            ("users", model.user_vector, user_rows, stats.users, dims["ku_hat"]),
            ("items", model.item_vector, item_rows, stats.items, dims["ki_hat"]),
            ("user_categories", model.uc_vector, pair_rows, stats.user_categories, dims["kuc_hat"]),
        ):
            t0 = time.perf_counter()
            blocks[name] = _run_batched(fn, make, n, dim, batch_size, bar)
            stats.seconds[name] = time.perf_counter() - t0
    finally:
        bar.close()
    built = gkc_bundle.build(
        user_ids=user_keys,
        user_vectors=blocks["users"],
        item_ids=vocabs.item.keys,
        item_vectors=blocks["items"],
        uc_user_ids=pairs["user_id"].to_numpy(),
        uc_category_ids=pairs["category_id"].to_numpy(),
        uc_vectors=blocks["user_categories"],
        strategy="serving",
        source={
            "extractor": str(ext.path.resolve()),
            "super": str(source.resolve()),
            "window": {"first_day": first_day, "last_day": last_day},
            "holdout_days": ext.config["data"].get("holdout_days", []),
            "tasks": list(model.cfg.tasks),
            "uc_layout": [f"kuc_hat:{t}" for t in model.cfg.tasks],
            "history": f"last {max_len} clicks up to the end of day {last_day}",
        },
        metrics=ext.metrics,
    )
    path = gkc_bundle.save(built, out)
    return path, stats
