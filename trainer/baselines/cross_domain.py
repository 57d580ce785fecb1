"""The joint training loop of the cross-domain baselines (CoNet, DARec), outside the modules.

Setting (paper §6.1, cross-domain recommendation): the sub-domain training rows are the target, the
super-domain rows of the same days the source. Every step takes one sub-domain batch (the downstream
batch size, days ascending and shuffled within a day, exactly like ``trainer.train``) and the matching
share of the source rows (also days ascending, shuffled within a day), so one pass covers both logs
once; the model returns its named losses and their sum is minimised with Adam. When the source is more
than ``source_cap`` times the sub-domain rows, each pass draws a fresh seeded sample of that size, so a
pass costs at most ``1 + source_cap`` sub-domain passes.

Both domains are encoded with one vocabulary (items, categories and shops are shared ids); a sub row's
behaviour sequence comes from the sub-domain clicks (as for the base model), a source row's from the
super-domain clicks, both strictly before the row. ``on_epoch(epoch, model, vocabs)`` after each pass
lets the experiment pick the number of passes on its validation day.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from contract.ids import Vocabs
from contract.schema import day_of
from ranker.model import Batch
from services.errors import InvalidArgument
from trainer.baselines.conet import CoNet, CoNetConfig
from trainer.baselines.darec import DARec, DARecConfig
from trainer.data.dataset import EncodedLog
from trainer.data.ordering import day_order
from trainer.train import TrainConfig, downstream_batch, downstream_config

METHODS = ("conet", "darec")


class CrossDomainModel(Protocol):
    def __call__(self, batch: Batch) -> Tensor: ...

    def losses(self, sub: Batch, source: Batch, progress: float) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class CrossDomainConfig:
    method: str = "conet"
    #: At most this many source rows per sub-domain row in one pass (a seeded sample when more).
    source_cap: float = 4.0
    conet: CoNetConfig = field(default_factory=CoNetConfig)
    darec: DARecConfig = field(default_factory=DARecConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidArgument(f"unknown cross-domain method {self.method!r}; expected one of {METHODS}")


def build_model(xcfg: CrossDomainConfig, vocabs: Vocabs, cfg: TrainConfig) -> CoNet | DARec:
    torch.manual_seed(cfg.seed)
    mcfg = downstream_config(vocabs, cfg)
    return CoNet(mcfg, xcfg.conet) if xcfg.method == "conet" else DARec(mcfg, xcfg.darec)


def source_steps(source_ts: np.ndarray, n_steps: int, cap: int, seed: int) -> list[np.ndarray]:
    """The source rows of one pass, days ascending and shuffled within a day, split over ``n_steps``."""
    order = day_order(source_ts, seed)
    if len(order) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(order), size=cap, replace=False))
        order = order[keep]
    if len(order) < n_steps:  # fewer source rows than steps: repeat them, every step gets some
        order = np.resize(order, n_steps)
    return np.array_split(order, n_steps)


@dataclass
class CrossDomainFit:
    """``fit(sub_df, cfg, on_epoch) -> (model, vocabs)``: train on ``sub_df`` and the source rows.

    ``source``: the candidate source rows; each call keeps those on or before the last day of
    ``sub_df``, so the validation fit never sees the validation day's source rows.
    ``source_history``: the log whose clicks form the source rows' behaviour sequences.
    """

    cfg: CrossDomainConfig
    source: pd.DataFrame
    source_history: pd.DataFrame
    progress: bool = False
    #: Per pass: the mean of each loss (the last call).
    curve: list[dict[str, float]] = field(default_factory=list)

    def source_for(self, sub_df: pd.DataFrame) -> pd.DataFrame:
        last = day_of(sub_df["ts"].to_numpy()).max()
        src = self.source[day_of(self.source["ts"].to_numpy()) <= last]
        if len(src) == 0:
            raise InvalidArgument(f"{self.cfg.method}: no source (super-domain) rows up to the training days")
        return src.reset_index(drop=True)

    def __call__(
        self,
        sub_df: pd.DataFrame,
        cfg: TrainConfig,
        on_epoch: Callable[[int, Any, Vocabs], None] | None = None,
    ) -> tuple[CoNet | DARec, Vocabs]:
        source = self.source_for(sub_df)
        cols = [c for c in sub_df.columns if c in source.columns]
        vocabs = Vocabs.build(pd.concat([sub_df[cols], source[cols]], ignore_index=True))
        sub_log = EncodedLog.encode(sub_df.reset_index(drop=True), vocabs, max_len=cfg.max_len)
        src_log = EncodedLog.encode(source, vocabs, history_from=self.source_history, max_len=cfg.max_len)
        model: Any = build_model(self.cfg, vocabs, cfg)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        n_steps = -(-len(sub_log) // cfg.batch_size)
        cap = int(self.cfg.source_cap * len(sub_log))
        self.curve = []
        for epoch in range(cfg.epochs):
            model.train()
            seed = cfg.seed * 1000 + epoch
            steps = zip(
                sub_log.batches(cfg.batch_size, seed=seed),
                source_steps(src_log.ts, n_steps, cap, seed),
                strict=True,
            )
            bar = tqdm(steps, total=n_steps, desc=f"{self.cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                       disable=not self.progress, leave=False)  # fmt: skip
            sums: dict[str, float] = {}
            for step, (rows, src_rows) in enumerate(bar):
                losses = model.losses(
                    downstream_batch(sub_log, rows, {}, "click"),
                    downstream_batch(src_log, src_rows, {}, "click"),
                    progress=epoch + step / n_steps,
                )
                optimiser.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimiser.step()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) / n_steps
            self.curve.append(sums)
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch + 1, model, vocabs)
        model.eval()
        return model, vocabs
