"""How many passes Stage 1 pre-training makes: the paper's one pass on large data, early stopping on a
held-out super-domain day on small data.

The paper trains the extractor one pass over billions of rows at batch 2000: millions of Adam steps.
On a 50-70k-row super-domain the same recipe is 25-35 steps; at lr 1e-3 from the embeddings' init
(std 0.05) an id's vector moves by at most ~0.03 and stays the random init (measured on the Taobao
behaviour split: cosine 0.98 between a trained user vector and its init after one pass), so K_u and K_i
are random per-id fingerprints that a downstream plug-in can only overfit (docs/experiments-taobao-
behavior.md). Hence ``passes=AUTO``:

- **given** (``--passes N``): exactly N passes.
- **continuation** (``--init``) or a resumed run: what the run was started with (a continuation is the
  paper's daily incremental update: one pass over the new days).
- **large data** (the training days hold at least ``one_pass_rows`` rows, default 1,000,000: 500 Adam
  steps at batch 2000, where every id of a long-tailed log has been seen in many batches): one pass,
  the paper's recipe. Early stopping would cost a second full run for a gain one pass already has.
- **small data**: train on every training day but the last, score the last (a held-out super-domain
  day) after each pass, stop when its click GAUC has not improved by ``min_delta`` for ``patience``
  passes or after ``max_passes``; the best pass count is then used for the real run over every
  training day. The curve and the held-out metrics of the best pass land in ``metrics.json``.

Pass ``p`` shuffles each day with ``rng(seed, day, p)``; pass 0 keeps ``rng(seed, day)``, so one pass is
bit-identical to the single-pass recipe (and to every checkpoint written before passes existed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from contract.ids import Vocabs
from contract.schema import DEFAULT_MAX_LEN, day_of
from trainer.data.dataset import EncodedLog
from trainer.data.source import LogSource, holdout_inputs
from trainer.models.batch import feature_batch
from trainer.models.strategies import build_extractor
from trainer.pretrain_steps import (
    AUTO,
    DEFAULT_STRATEGY,
    PretrainConfig,
    day_batches,
    extractor_config,
    score_holdout,
    train_step,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassPlan:
    passes: int
    rule: str
    #: Held-out click GAUC after each pass of the early-stopping run (empty when none ran).
    curve: list[float] = field(default_factory=list)
    validation_day: int | None = None
    #: Per-task metrics of the early-stopping run's best pass on the validation day.
    validation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "rule": self.rule,
            "curve": [round(x, 6) for x in self.curve],
            "validation_day": self.validation_day,
        }


def best_pass(curve: list[float], min_delta: float) -> int:
    """1-based pass with the best score; a later pass must beat the best by ``min_delta`` to count."""
    best, best_score = 0, -np.inf
    for i, score in enumerate(curve):
        if not np.isnan(score) and score > best_score + min_delta:
            best, best_score = i, score
    return best + 1


def stopped(curve: list[float], patience: int, min_delta: float) -> bool:
    """No improvement of at least ``min_delta`` over the best for the last ``patience`` passes."""
    return len(curve) - best_pass(curve, min_delta) >= patience


def choose_passes(
    cfg: PretrainConfig, data: LogSource, train_days: list[int], tasks: tuple[str, ...], *, fresh: bool
) -> PassPlan:
    """The number of passes for this run (see the module docstring for the rules). Only early stopping
    holds the log in memory (``data.frame()``), and only below ``one_pass_rows`` training rows."""
    if cfg.passes != AUTO:
        return PassPlan(cfg.passes, "given")
    if not fresh:
        return PassPlan(1, "continuation: one pass over the new days (the paper's daily update)")
    rows = data.rows(train_days)
    if rows >= cfg.one_pass_rows:
        return PassPlan(1, f"large data: {rows} training rows >= {cfg.one_pass_rows}, the paper's one pass")
    if len(train_days) < 2:
        return PassPlan(1, "one training day: no day left to validate on, one pass")
    return early_stopping(cfg, data.frame(), train_days, tasks)


def evaluate_holdout(
    model: torch.nn.Module,
    df: pd.DataFrame,
    vocabs: Vocabs,
    holdout_days: Sequence[int],
    tasks: Sequence[str],
    max_len: int = DEFAULT_MAX_LEN,
) -> dict[str, Any]:
    """Per-task GAUC on the held-out days (histories: every earlier click in ``df``, strictly before).

    For ``serving`` every form gets its own ``gauc_<form>``; ``gauc`` scores the mean of their logits.
    Click also gets ``gauc_popularity``: the items' click rate over the training rows, as a baseline.
    """
    return score_holdout(model, [holdout_inputs(df, vocabs, holdout_days, max_len)], tasks)


def early_stopping(
    cfg: PretrainConfig, df: pd.DataFrame, train_days: list[int], tasks: tuple[str, ...]
) -> PassPlan:
    """Train on ``train_days[:-1]`` pass by pass, scoring ``train_days[-1]``; the best pass count."""
    from trainer.sharded import shard, unsharded

    fit_days, val_day = train_days[:-1], train_days[-1]
    days = day_of(df["ts"].to_numpy())
    fit = df[np.isin(days, fit_days)].reset_index(drop=True)
    vocabs = Vocabs.build(fit)
    torch.manual_seed(cfg.seed)
    shape = extractor_config(vocabs, cfg.strategy or DEFAULT_STRATEGY, tasks, cfg.max_len)
    sharded = shard(
        build_extractor(shape, materialize=False),
        cfg.lr,
        sparse_lr_ratio=cfg.sparse_lr_ratio,
        user_shards=cfg.fresh_user_shards,
    )
    model, optimizer = sharded.module, sharded.optimizer
    encoded = EncodedLog.encode(fit, vocabs, history_from=df[days <= fit_days[-1]], max_len=cfg.max_len)
    curve: list[float] = []
    per_pass: list[dict[str, Any]] = []
    for p in range(cfg.max_passes):
        model.train()
        for rows in day_batches(encoded.day, cfg.seed, cfg.batch_size, epoch=p):
            train_step(
                model,
                optimizer,
                feature_batch(encoded, rows, tasks, with_pairs=cfg.alpha > 0),
                tasks,
                cfg.alpha,
            )
        plain = unsharded(sharded)  # one process: never None
        assert plain is not None
        metrics = evaluate_holdout(plain, df, vocabs, [val_day], tasks, cfg.max_len)
        per_pass.append(metrics)
        score = metrics.get("click", {}).get("gauc")
        curve.append(float("nan") if score is None else float(score))
        log.info("pass %d: held-out day %d click GAUC %s", p + 1, val_day, score)
        if stopped(curve, cfg.patience, cfg.min_delta):
            break
    best = best_pass(curve, cfg.min_delta)
    why = "plateau" if len(curve) < cfg.max_passes else f"budget of {cfg.max_passes} passes"
    rule = (
        f"early stopping on held-out super-domain day {val_day} (trained on days "
        f"{fit_days[0]}-{fit_days[-1]}): best click GAUC at pass {best} of {len(curve)} ({why})"
    )
    return PassPlan(best, rule, curve, val_day, per_pass[best - 1])
