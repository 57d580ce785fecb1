"""What the pre-training loop (:mod:`trainer.pretrain`), the pass search (:mod:`trainer.pretrain_passes`),
the data sources (:mod:`trainer.data.source`, :mod:`trainer.data.stream`) and the benches share: the run's
config, the batch order, the split of days, the extractor's shape, one optimisation step and hold-out
scoring.

Kept apart from the loop so that those modules import it at the top instead of importing the loop back
lazily (the loop imports them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.extractor import ExtractorConfig
from contract.ids import Vocabs
from contract.schema import DEFAULT_MAX_LEN, TASKS
from services.errors import InvalidArgument
from trainer.data.dataset import EncodedLog
from trainer.distributed import DataParallel
from trainer.losses import hybrid_loss
from trainer.metrics import auc, gauc
from trainer.models.batch import feature_batch

#: What ``keep pretrain`` trains unless told otherwise: the forms ``keep export`` can serve.
DEFAULT_STRATEGY = "serving"


#: ``passes`` value that lets the data decide (the default; :mod:`trainer.pretrain_passes`).
AUTO = 0
#: At or above this many training rows, AUTO is the paper's one pass (see :mod:`trainer.pretrain_passes`).
ONE_PASS_ROWS = 1_000_000
#: The most rows of a day one rank of a streamed pre-training encodes at once (a day's own rows up to
#: it; ``medium``'s days, ~0.77M rows, fit whole): what bounds the data path's memory on big days.
ROWS_IN_MEMORY = 1_000_000


@dataclass(frozen=True)
class PretrainConfig:
    super_path: Path
    out: Path
    tasks: tuple[str, ...] = TASKS
    alpha: float = 0.25
    #: ``None``: the ``init`` (or resumed) checkpoint's strategy, else ``serving`` (what export needs).
    strategy: str | None = None
    seed: int = 0
    batch_size: int = 2000
    lr: float = 1e-3
    #: The id tables' row-wise Adagrad learning rate as a multiple of ``lr``; ``None``: the default of
    #: :data:`trainer.sharded.SPARSE_LR_RATIO`.
    sparse_lr_ratio: float | None = None
    #: Column shards of the user table, spread over the ranks (shard i on rank i % world): with N ranks,
    #: N shards give each rank 1/N of it. ``None``: the ``init`` (or resumed) run's, else
    #: :data:`trainer.sharded.USER_COLUMN_SHARDS`.
    user_column_shards: int | None = None
    init: Path | None = None
    holdout_days: int = 1
    #: Save the resumable state every this many batches (and at the end of the run).
    checkpoint_every: int = 200
    max_len: int = DEFAULT_MAX_LEN
    progress: bool = True
    #: Passes over the training days; AUTO (0): one on large data, early stopping on small data.
    passes: int = AUTO
    #: Early stopping's budget, patience (passes without a gain of min_delta click GAUC) and the size
    #: (training rows) from which AUTO is the paper's single pass.
    max_passes: int = 8
    patience: int = 2
    min_delta: float = 0.001
    one_pass_rows: int = ONE_PASS_ROWS
    #: Streamed sources only (``keep data sequences``): the most rows of a day this rank encodes at once.
    rows_in_memory: int = ROWS_IN_MEMORY

    @property
    def fresh_user_shards(self) -> int:
        """The user table's column shards of a model built from nothing (a new run, early stopping)."""
        from trainer.sharded import USER_COLUMN_SHARDS  # torchrec: imported when a model is built

        return self.user_column_shards or USER_COLUMN_SHARDS


def day_batches(days: np.ndarray, seed: int, batch_size: int, epoch: int = 0) -> list[np.ndarray]:
    """Row-index batches: days ascending, each day permuted by ``rng(seed, day)`` (pass ``epoch`` > 0:
    ``rng(seed, day, epoch)``), cut per day."""
    out: list[np.ndarray] = []
    order = np.argsort(days, kind="stable")
    bounds = np.flatnonzero(np.diff(days[order])) + 1
    for chunk in np.split(order, bounds):
        if len(chunk) == 0:
            continue
        key = [seed, int(days[chunk[0]])] + ([epoch] if epoch else [])
        rng = np.random.default_rng(key)
        chunk = chunk[rng.permutation(len(chunk))]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return out


def pass_batches(days: np.ndarray, seed: int, batch_size: int, passes: int) -> list[np.ndarray]:
    """Every pass's day batches in order (pass 0 exactly the single-pass batches)."""
    out: list[np.ndarray] = []
    for p in range(passes):
        out += day_batches(days, seed, batch_size, epoch=p)
    return out


def split_days(days: list[int], holdout_days: int, source: str) -> tuple[list[int], list[int]]:
    if holdout_days < 0:
        raise InvalidArgument("--holdout-days must be >= 0")
    if holdout_days >= len(days):
        raise InvalidArgument(
            f"{source}: {len(days)} day(s) of data; holding out {holdout_days} leaves nothing to train on"
        )
    cut = len(days) - holdout_days
    return days[:cut], days[cut:]


def extractor_config(
    vocabs: Vocabs, strategy: str, tasks: tuple[str, ...], max_len: int = DEFAULT_MAX_LEN
) -> ExtractorConfig:
    """The extractor's shape for these vocabularies (shared by pre-training and the training bench)."""
    return ExtractorConfig(
        n_users=len(vocabs.user),
        n_items=len(vocabs.item),
        n_shops=vocabs.n_shops(),
        n_categories=len(vocabs.category),
        strategy=strategy,
        tasks=tasks,
        max_len=max_len,
    )


def train_step(
    model: torch.nn.Module,
    optimizer: Any,
    batch: Any,
    tasks: Sequence[str],
    alpha: float,
    group: DataParallel | None = None,
) -> dict[str, float]:
    """One step on the sum of every head's hybrid loss; returns each head's loss.

    ``model`` is a sharded extractor (:func:`trainer.sharded.shard`): ``backward`` all-reduces the
    dense gradients (DistributedDataParallel) and applies the tables' fused optimizer; ``optimizer``
    then steps the dense parameters. Every head enters the loss (a head without rows with weight 0),
    so every rank reaches every collective of ``backward`` even when its shard has no loss."""
    outputs = model(batch)
    losses: dict[str, torch.Tensor] = {}
    for head, logits in outputs.items():
        task = head.rsplit(":", 1)[-1]
        if task not in tasks or logits.numel() == 0:
            continue
        losses[head] = hybrid_loss(logits, batch.task_labels(task), batch.pairs.get(task), alpha)
    if not losses and not (group and group.enabled):
        return {}
    optimizer.zero_grad(set_to_none=True)
    unused = [0.0 * logits.sum() for head, logits in outputs.items() if head not in losses]
    torch.stack(list(losses.values()) + unused).sum().backward()
    optimizer.step()
    return {head: float(v.detach()) for head, v in losses.items()}


def iter_scores(
    model: torch.nn.Module, log: EncodedLog, tasks: Sequence[str], batch_size: int = 8192
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(rows, {head: logits}) in file order; non-click heads scored on the clicked rows only."""
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(log), batch_size):
            rows = np.arange(start, min(start + batch_size, len(log)))
            batch = feature_batch(log, rows, tasks)
            yield rows, {h: v.numpy() for h, v in model(batch).items()}


def score_holdout(
    model: torch.nn.Module, parts: Iterable[tuple[EncodedLog, np.ndarray]], tasks: Sequence[str]
) -> dict[str, Any]:
    """Per-task GAUC of encoded held-out rows and their items' popularity (click rate before the
    held-out days), given as parts (:meth:`trainer.data.source.LogSource.holdout`: a streamed source
    encodes a bounded number of rows at a time); only ids, labels and scores of every part are kept."""
    scores: dict[str, list[np.ndarray]] = {}
    users: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {}
    popularity: list[np.ndarray] = []
    for log, part_popularity in parts:
        for _, out in iter_scores(model, log, tasks):
            for head, s in out.items():
                scores.setdefault(head, []).append(s)
        users.append(log.user)
        popularity.append(part_popularity)
        for task, values in log.labels.items():
            labels.setdefault(task, []).append(values)
    if not users:
        return {}
    user = np.concatenate(users)
    label = {task: np.concatenate(values) for task, values in labels.items()}
    clicked = label["click"] == 1
    metrics: dict[str, Any] = {}
    for task in tasks:
        heads = [h for h in scores if h.rsplit(":", 1)[-1] == task]
        if not heads:
            continue
        sel = np.ones(len(user), bool) if task == "click" else clicked
        task_users, task_labels = user[sel], label[task][sel]
        per_head = {h: np.concatenate(scores[h]) for h in heads}
        entry: dict[str, Any] = {"rows": int(sel.sum()), "positives": int(task_labels.sum())}
        mean_logit = np.mean(list(per_head.values()), axis=0)
        entry["gauc"] = _safe_gauc(task_users, task_labels, mean_logit)
        entry["auc"] = _safe_auc(task_labels, mean_logit)
        if len(heads) > 1:
            for h, s in per_head.items():
                entry[f"gauc_{h.split(':')[0]}"] = _safe_gauc(task_users, task_labels, s)
        metrics[task] = entry
    if "click" in metrics:
        metrics["click"]["gauc_popularity"] = _safe_gauc(user, label["click"], np.concatenate(popularity))
    return metrics


def _safe_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    value = float(auc(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")
    return None if np.isnan(value) else round(value, 6)


def _safe_gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float | None:
    value = float(gauc(users, labels, scores)) if len(labels) else float("nan")
    return None if np.isnan(value) else round(value, 6)
