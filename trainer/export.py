"""``keep export``: turn a ``serving`` extractor checkpoint into a knowledge bundle (paper §5.2).

Entries: one K̂_u per known user, one K̂_i per known item, one K̂_uc per (user, category) pair that
occurs in the super-domain log up to the end of the training window: N_u + N_i + N_uc rows, computed in
batches; nothing is ever evaluated per (user, item) pair.

Histories: a user's behaviour sequence is their last ``max_len`` clicks up to the end of the extractor's
training window (the held-out day is not included), the state GKC serves until the next version. A
(user, category) pair reuses its user's window, so the history index is built once, per user; the pairs
are ordered by user and each batch builds a user's behaviour sequence and embeddings once for all of
that user's categories (:meth:`ServingExtractor.uc_vector_per_user`; the same vectors as one row per
pair). Every id of the extractor's vocabulary is exported, the ids an ``--init`` continuation added
included (they have trained rows of their own); ids in the log after the extractor's window are not.

:func:`trainer.export_store.export_to_store` writes the same entries straight into GKC's store
instead of a bundle, sharded under torchrun.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from contract.ids import OOV, PAD, RESERVED, canonical_ids
from contract.knowledge import Dims
from contract.schema import SECONDS_PER_DAY
from gkc import bundle as gkc_bundle
from gkc.bundle_writer import BundleWriter
from gkc.delta import pair_keys
from services.errors import Conflict, InvalidArgument
from trainer.data.sequences import HistoryIndex
from trainer.export_scan import SCAN_BATCH_ROWS, LogDigest
from trainer.models.batch import FeatureBatch, id_batch
from trainer.models.checkpoint import LoadedExtractor, load_extractor
from trainer.models.towers import ServingExtractor


@dataclass
class ExportStats:
    users: int = 0
    items: int = 0
    user_categories: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: A delta written into GKC's store: its base, rule and share of the whole export.
    delta: dict[str, Any] = field(default_factory=dict)

    @property
    def users_per_s(self) -> float:
        return self.users / max(self.seconds.get("users", 0.0), 1e-9)

    def to_json(self) -> dict[str, Any]:
        """What ``keep export`` prints about the entries it computed."""
        return {
            "users": self.users,
            "items": self.items,
            "user_categories": self.user_categories,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            **self.delta,
        }


def _item_features(items: pd.DataFrame, ext: LoadedExtractor, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each known item's category and shop index, from its last row in the log (OOV if unseen)."""
    idx = ext.vocabs.item.lookup(items["item_id"].to_numpy()) - RESERVED
    keep = idx >= 0
    category = np.full(n_items, OOV, dtype=np.int64)
    shop = np.full(n_items, PAD, dtype=np.int64)
    category[idx[keep]] = ext.vocabs.category.lookup(items["category_id"].to_numpy()[keep])
    if ext.vocabs.shop is not None and "shop_id" in items.columns:
        shop[idx[keep]] = ext.vocabs.shop.lookup(items["shop_id"].to_numpy()[keep])
    return category, shop


@dataclass(frozen=True)
class Only:
    """Export only these users (their K̂_u and all their K̂_uc, or only the K̂_uc of ``pairs``: keys of
    :func:`gkc.delta.pair_keys`, each of one of ``users``) and items (canonical ids)."""

    users: np.ndarray
    items: np.ndarray
    pairs: np.ndarray | None = None


def export(
    extractor: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    super_path: str | os.PathLike[str] | None = None,
    batch_size: int = 4096,
    progress: bool = True,
    dtype: str = "float32",
    scan_batch_rows: int = SCAN_BATCH_ROWS,
    only: Only | None = None,
) -> tuple[Path, ExportStats]:
    """Write the bundle for ``extractor`` to ``out``, stored at ``dtype``; returns its path and timings.
    ``only``: the entries of those users and items alone (:meth:`ExportPlan.restricted`).

    The log streams past in batches of ``scan_batch_rows`` rows (:class:`trainer.export_scan.LogDigest`)."""
    ext = load_extractor(extractor)
    check_exportable(ext)
    if Path(out).exists():
        raise InvalidArgument(f"{out} already exists; refusing to overwrite a bundle")
    source = Path(super_path or ext.config.data.super)
    digest = LogDigest.scan(source, ext.window[1], scan_batch_rows)
    return export_loaded(
        ext, digest, out, source=source, batch_size=batch_size, progress=progress, dtype=dtype, only=only
    )


def check_exportable(ext: LoadedExtractor) -> None:
    model = ext.model
    if not isinstance(model, ServingExtractor):
        raise InvalidArgument(
            f"{ext.path} was trained with --strategy {ext.strategy}; export needs the serving forms "
            "(retrain with --strategy serving: decomposition + degeneration)"
        )
    if ext.progress.get("state") != "done":
        raise Conflict(f"{ext.path}: pre-training has not completed; rerun keep pretrain to resume it")


@dataclass(frozen=True)
class Block:
    """One of the bundle's three blocks: its rows' ids and how to compute their vectors."""

    name: str  # "users" | "items" | "user_categories"
    n: int
    dim: int
    #: Rows (positions in the block) → their ``[len(rows), dim]`` vectors.
    vectors: Callable[[np.ndarray], torch.Tensor]

    def compute(self, lo: int, hi: int, batch_size: int, bar: tqdm) -> np.ndarray:
        """Rows ``[lo, hi)``, in batches of ``batch_size`` from ``lo``, as one ``[hi - lo, dim]`` array."""
        out = np.empty((hi - lo, self.dim), dtype=np.float32)
        for start, vectors in self.stream(lo, hi, batch_size, bar):
            out[start - lo : start - lo + len(vectors)] = vectors
        return out

    def stream(self, lo: int, hi: int, batch_size: int, bar: tqdm) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) per batch of ``batch_size`` rows of ``[lo, hi)``, in order."""
        with torch.inference_mode():
            for start in range(lo, hi, batch_size):
                sel = np.arange(start, min(start + batch_size, hi))
                vectors = self.vectors(sel).numpy()
                bar.update(len(sel))
                yield start, vectors


@dataclass
class ExportPlan:
    """Everything an export computes before any vector: ids, blocks, provenance (same on every rank)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    uc_user_ids: np.ndarray
    uc_category_ids: np.ndarray
    #: Each pair's user's place in :attr:`user_ids` (ascending: the pairs are ordered by user).
    uc_user_places: np.ndarray
    blocks: dict[str, Block]
    source: dict[str, object]
    metrics: dict[str, object]
    stats: ExportStats

    def ids(self, name: str, lo: int, hi: int) -> dict[str, np.ndarray]:
        if name == "users":
            return {"user_ids": self.user_ids[lo:hi]}
        if name == "items":
            return {"item_ids": self.item_ids[lo:hi]}
        return {"uc_user_ids": self.uc_user_ids[lo:hi], "uc_category_ids": self.uc_category_ids[lo:hi]}

    def bundle(
        self, spans: dict[str, tuple[int, int]], batch_size: int, progress: bool, dtype: str = "float32"
    ) -> gkc_bundle.Bundle:
        """The bundle of rows ``spans[block]`` of every block (all rows: the whole export), stored at
        ``dtype``."""
        total = sum(hi - lo for lo, hi in spans.values())
        with _bar(total, progress) as bar:
            parts: dict[str, np.ndarray] = {}
            for name, block in self.blocks.items():
                lo, hi = spans[name]
                t0 = time.perf_counter()
                vectors = block.compute(lo, hi, batch_size, bar)
                self.stats.seconds[name] = time.perf_counter() - t0
                parts.update(self.ids(name, lo, hi))
                parts[VECTORS[name]] = vectors
        return gkc_bundle.build(
            **parts, strategy="serving", source=self.source, metrics=self.metrics, dtype=dtype
        )

    def user_span(self, lo: int, hi: int, batch_size: int) -> dict[str, tuple[int, int]]:
        """The spans of every block for users ``[lo, hi)`` (places in :attr:`user_ids`): their K̂_u and
        all their K̂_uc (the pairs are ordered by user, so a contiguous span); the items are the caller's
        to split."""
        uc = np.searchsorted(self.uc_user_places, [lo, hi])
        return {"users": (lo, hi), "user_categories": (int(uc[0]), int(uc[1]))}

    def counts(self) -> gkc_bundle.Counts:
        return gkc_bundle.Counts(self.stats.users, self.stats.items, self.stats.user_categories)

    def restricted(self, only: Only) -> ExportPlan:
        """The plan of ``only``'s entries: its users' K̂_u and K̂_uc, its items' K̂_i, computed by the
        same functions in batches of those rows alone (what a ``seen`` delta writes, without computing
        the rest). Ids not in the export are ignored. The source records the whole export's counts."""
        rows = {
            "users": np.flatnonzero(np.isin(self.user_ids, only.users)),
            "items": np.flatnonzero(np.isin(self.item_ids, only.items)),
            "user_categories": np.flatnonzero(
                np.isin(self.uc_user_ids, only.users)
                if only.pairs is None
                else np.isin(pair_keys(self.uc_user_ids, self.uc_category_ids), only.pairs)
            ),
        }
        blocks = {
            name: replace(block, n=len(rows[name]), vectors=_through(block.vectors, rows[name]))
            for name, block in self.blocks.items()
        }
        at = rows["user_categories"]
        return ExportPlan(
            user_ids=self.user_ids[rows["users"]],
            item_ids=self.item_ids[rows["items"]],
            uc_user_ids=self.uc_user_ids[at],
            uc_category_ids=self.uc_category_ids[at],
            uc_user_places=np.searchsorted(rows["users"], self.uc_user_places[at]),
            blocks=blocks,
            source={**self.source, "subset": {"of_counts": vars(self.counts())}},
            metrics=self.metrics,
            stats=ExportStats(users=len(rows["users"]), items=len(rows["items"]), user_categories=len(at)),
        )

    def dims(self) -> Dims:
        b = self.blocks
        return Dims(user=b["users"].dim, item=b["items"].dim, uc=b["user_categories"].dim)


def _through(vectors: Callable[[np.ndarray], torch.Tensor], rows: np.ndarray) -> Callable[..., torch.Tensor]:
    """``vectors`` of a block read at ``rows`` (position ``k`` of the restricted block is ``rows[k]``)."""
    return lambda sel: vectors(rows[sel])


VECTORS = {"users": "user_vectors", "items": "item_vectors", "user_categories": "uc_vectors"}
WRITER_BLOCK = {"users": "users", "items": "items", "user_categories": "uc"}


@contextlib.contextmanager
def _bar(total: int, progress: bool) -> Iterator[tqdm]:
    bar = tqdm(
        total=total,
        unit="entries",
        unit_scale=True,
        desc="export",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def user_filter(ext: LoadedExtractor) -> Callable[[np.ndarray], np.ndarray] | None:
    """For :class:`LogDigest`: the rows of the users whose K̂ ``ext`` computes (``None``: all)."""
    if ext.user_positions is None:
        return None
    lookup = ext.vocabs.user.lookup  # the range's own vocabulary: every other user is OOV
    return lambda user_ids: lookup(user_ids) >= RESERVED


def prepare(ext: LoadedExtractor, log: pd.DataFrame | LogDigest, *, source: Path) -> ExportPlan:
    """The export's ids and block functions: histories up to the end of the window, item features."""
    check_exportable(ext)
    model = ext.model
    assert isinstance(model, ServingExtractor)
    first_day, last_day = ext.window
    # a frame: one batch
    digest = log if isinstance(log, LogDigest) else LogDigest.of([log], last_day, users=user_filter(ext))
    clicks = digest.clicks
    vocabs = ext.vocabs
    max_len = model.cfg.max_len

    user_keys = vocabs.user.keys
    user_index = np.arange(RESERVED, RESERVED + len(user_keys), dtype=np.int64)
    end_ts = np.full(len(user_keys), (last_day + 1) * SECONDS_PER_DAY, dtype=np.int64)
    history = HistoryIndex.build(
        vocabs.user.lookup(clicks["user_id"].to_numpy()),
        clicks["ts"].to_numpy(np.int64),
        np.ones(len(clicks), dtype=bool),
        {
            "item": vocabs.item.lookup(clicks["item_id"].to_numpy()),
            "category": vocabs.category.lookup(clicks["category_id"].to_numpy()),
        },
        max_len=max_len,
        rows_user=user_index,
        rows_ts=end_ts,
    )
    pairs = digest.pairs
    pair_user = vocabs.user.lookup(pairs["user_id"].to_numpy())
    known = pair_user >= RESERVED
    pairs, pair_user = pairs[known], pair_user[known]
    pair_cat = vocabs.category.lookup(pairs["category_id"].to_numpy())
    by_user = np.lexsort((pair_cat, pair_user))  # a user's categories side by side: one state per user
    pairs, pair_user, pair_cat = pairs.iloc[by_user], pair_user[by_user], pair_cat[by_user]
    item_cat, item_shop = _item_features(digest.items, ext, len(vocabs.item.keys))
    item_index = np.arange(RESERVED, RESERVED + len(vocabs.item.keys), dtype=np.int64)

    def user_rows(rows: np.ndarray) -> FeatureBatch:
        """Users (their row in the history index) with their behaviour sequences."""
        return id_batch(
            user=user_index[rows],
            hist_item=history.gather(rows, "item"),
            hist_category=history.gather(rows, "category"),
            max_len=max_len,
        )

    def user_vectors(sel: np.ndarray) -> torch.Tensor:
        return model.user_vector(user_rows(sel))

    def item_vectors(sel: np.ndarray) -> torch.Tensor:
        batch = id_batch(item=item_index[sel], shop=item_shop[sel], category=item_cat[sel], max_len=max_len)
        return model.item_vector(batch)

    def pair_vectors(sel: np.ndarray) -> torch.Tensor:
        users, owner = np.unique(pair_user[sel], return_inverse=True)
        return model.uc_vector_per_user(
            user_rows(users - RESERVED),
            torch.from_numpy(owner.astype(np.int64)),
            torch.from_numpy(pair_cat[sel]),
        )

    dims = model.block_dims()
    stats = ExportStats(users=len(user_keys), items=len(item_index), user_categories=len(pairs))
    blocks = (
        Block("users", stats.users, dims["ku_hat"], user_vectors),
        Block("items", stats.items, dims["ki_hat"], item_vectors),
        Block("user_categories", stats.user_categories, dims["kuc_hat"], pair_vectors),
    )
    return ExportPlan(
        user_ids=canonical_ids(user_keys),
        item_ids=canonical_ids(vocabs.item.keys),
        uc_user_ids=canonical_ids(pairs["user_id"].to_numpy()),
        uc_category_ids=canonical_ids(pairs["category_id"].to_numpy()),
        uc_user_places=pair_user - RESERVED,
        blocks={b.name: b for b in blocks},
        source={
            "extractor": str(ext.path.resolve()),
            "super": str(source.resolve()),
            "window": {"first_day": first_day, "last_day": last_day},
            "holdout_days": list(ext.config.data.holdout_days),
            "tasks": list(model.cfg.tasks),
            "uc_layout": [f"kuc_hat:{t}" for t in model.cfg.tasks],
            "history": f"last {max_len} clicks up to the end of day {last_day}",
            "init_from": ext.config.data.init_from,
        },
        metrics=dict(ext.metrics),
        stats=stats,
    )


def export_loaded(
    ext: LoadedExtractor,
    log: pd.DataFrame | LogDigest,
    out: str | os.PathLike[str],
    *,
    source: Path,
    batch_size: int = 4096,
    progress: bool = True,
    dtype: str = "float32",
    only: Only | None = None,
) -> tuple[Path, ExportStats]:
    """:func:`export` for an extractor already in memory and its super-domain log (a frame, or the
    :class:`trainer.export_scan.LogDigest` :func:`export` streams).

    Streams: each batch's vectors are appended to the bundle's files
    (:class:`gkc.bundle_writer.BundleWriter`), so the memory needed does not grow with the K̂_uc block."""
    plan = prepare(ext, log, source=source)
    if only is not None:
        plan = plan.restricted(only)
    writer = BundleWriter(out, plan.counts(), plan.dims(), dtype)
    try:
        with _bar(sum(b.n for b in plan.blocks.values()), progress) as bar:
            for name, block in plan.blocks.items():
                t0 = time.perf_counter()
                for _, vectors in block.stream(0, block.n, batch_size, bar):
                    writer.append(WRITER_BLOCK[name], vectors)
                plan.stats.seconds[name] = time.perf_counter() - t0
        path = writer.finish(
            user_ids=plan.user_ids,
            item_ids=plan.item_ids,
            uc_user_ids=plan.uc_user_ids,
            uc_category_ids=plan.uc_category_ids,
            source=plan.source,
            metrics=plan.metrics,
        )
    except BaseException:
        writer.abort()
        raise
    return path, plan.stats
