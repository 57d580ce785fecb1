"""Pre-training of the sequence baselines (BERT4Rec, S3-Rec) and the knowledge they hand downstream.

The loop (outside the modules): every user's super-domain click windows (:func:`click_windows`),
shuffled, Adam; a seeded 10% of the windows is held out, and the number of passes is chosen on the
held-out objective (stop after ``patience`` passes without improvement, keep the best weights). Nothing
of the downstream logs, let alone the test day, is looked at.

Downstream (paper §6.1's pre-training setting: pre-train on the super-domain, then train the sub-domain
model): the frozen model gives each downstream row three blocks, fed to the base model through the
same plug-in as KEEP's knowledge (``h'_m = h_m + MLP(K)``), so the base architecture is unchanged:

- ``seq``: the user state, the encoder output at a [MASK] appended after the user's super-domain clicks
  strictly before the row;
- ``item``: the candidate's pre-trained item embedding;
- ``seq*item``: ``query(seq) ⊙ item``, whose sum is the pre-trained model's own next-item score.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from contract.ids import PAD
from contract.schema import DEFAULT_MAX_LEN
from trainer.baselines.bert4rec import Bert4Rec, ClozeConfig
from trainer.baselines.encoder import EncoderConfig, SequenceEncoder
from trainer.baselines.s3rec import S3Rec, S3RecConfig
from trainer.baselines.sequences import ItemCatalog, click_windows, row_histories

METHODS = ("bert4rec", "s3rec")


class SequenceModel(Protocol):
    encoder: SequenceEncoder
    objectives: tuple[str, ...]

    def query(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def losses(self, items: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class SequencePretrainConfig:
    method: str = "bert4rec"
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = DEFAULT_MAX_LEN
    dropout: float = 0.1
    batch_size: int = 128
    lr: float = 1e-3
    max_epochs: int = 40
    patience: int = 3
    holdout: float = 0.1
    seed: int = 0
    progress: bool = False
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    s3rec: S3RecConfig = field(default_factory=S3RecConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown sequence method {self.method!r}; expected one of {', '.join(METHODS)}")


def build_model(cfg: SequencePretrainConfig, catalog: ItemCatalog) -> nn.Module:
    enc = EncoderConfig(
        n_items=catalog.n_items, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads, max_len=cfg.max_len,
        dropout=cfg.dropout,
    )  # fmt: skip
    if cfg.method == "bert4rec":
        return Bert4Rec(enc, cfg.cloze)
    return S3Rec(
        enc, catalog.item_category, catalog.item_shop, catalog.n_categories, catalog.n_shops, cfg.s3rec
    )


@dataclass
class PretrainedSequences:
    """A frozen pre-trained sequence model with its catalog: knowledge for downstream rows."""

    cfg: SequencePretrainConfig
    catalog: ItemCatalog
    model: nn.Module
    #: Per pass: mean training loss per objective and the held-out total.
    history: list[dict[str, Any]]
    epochs: int

    @property
    def blocks(self) -> dict[str, int]:
        d = self.cfg.dim
        return {"seq": d, "item": d, "seq*item": d}

    @torch.no_grad()
    def matrix(self, rows: pd.DataFrame, history_from: pd.DataFrame, batch_size: int = 2048) -> np.ndarray:
        """``[len(rows), 3 * dim]`` float32: ``[seq, item, seq*item]`` per row (see the module docstring)."""
        model: Any = self.model.eval()
        log = row_histories(self.catalog, rows, history_from, self.cfg.max_len)
        # Rows of one user between the same two super-domain clicks share their window: encode each once.
        window = np.stack((log.history.start, log.history.end), axis=1)
        _, first, which = np.unique(window, axis=0, return_index=True, return_inverse=True)
        states = np.empty((len(first), self.cfg.dim), dtype=np.float32)
        by_length = first[np.argsort(log.history.lengths(first), kind="stable")]  # similar lengths together
        slot = np.empty(len(log), dtype=np.int64)
        slot[first] = np.arange(len(first))
        for start in range(0, len(by_length), batch_size):
            idx = by_length[start : start + batch_size]
            history = torch.from_numpy(log.history.gather(idx, "item"))
            states[slot[idx]] = model.encoder.user_state(history).numpy()
        state = torch.from_numpy(states[which.reshape(-1)])
        item = model.encoder.item(torch.from_numpy(log.item))
        return torch.cat((state, item, model.query(state) * item), dim=-1).numpy()


def _batches(windows: np.ndarray, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Row batches of windows of similar length (each batch is cut to its longest window), in a random
    order; windows of one length are shuffled among themselves. ``rng=None``: a fixed order."""
    lengths = (windows != PAD).sum(1)
    noise = rng.random(len(windows)) if rng is not None else np.arange(len(windows))
    order = np.lexsort((noise, lengths))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _held_out_loss(model: Any, windows: np.ndarray, cfg: SequencePretrainConfig) -> float:
    """Total objective on the held-out windows, with the same masks every pass (a fixed generator)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in _batches(windows, 512, None):
            losses = model.losses(torch.from_numpy(windows[rows]), gen)
            total += float(sum(losses.values())) * len(rows)
            count += len(rows)
    model.train()
    return total / max(count, 1)


def pretrain_sequences(log: pd.DataFrame, cfg: SequencePretrainConfig) -> PretrainedSequences:
    """Pre-train ``cfg.method`` on the click windows of ``log`` (the super-domain)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    catalog = ItemCatalog.build(log)
    windows = click_windows(log, catalog.vocabs.item, cfg.max_len)
    if len(windows) == 0:
        raise ValueError("the pre-training log has no user with two clicks: nothing to pre-train on")
    perm = rng.permutation(len(windows))
    n_val = round(cfg.holdout * len(windows)) if len(windows) >= 20 else 0
    val, fit = windows[perm[:n_val]], windows[perm[n_val:]]
    model: Any = build_model(cfg, catalog)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best, best_state, best_epoch, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    bar = tqdm(range(cfg.max_epochs), desc=f"pretrain {cfg.method}", disable=not cfg.progress, leave=False)
    for epoch in bar:
        model.train()
        sums = dict.fromkeys(model.objectives, 0.0)
        batches = _batches(fit, cfg.batch_size, rng)
        for rows in batches:
            losses = model.losses(torch.from_numpy(fit[rows]), gen)
            optimiser.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimiser.step()
            for name, value in losses.items():
                sums[name] += float(value.detach()) / len(batches)
        held_out = _held_out_loss(model, val, cfg) if n_val else float(sum(sums.values()))
        history.append({"epoch": epoch + 1, "train": sums, "held_out": held_out})
        bar.set_postfix(held_out=f"{held_out:.3f}")
        if held_out < best - 1e-4:
            best, best_state, best_epoch, stale = held_out, copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return PretrainedSequences(cfg=cfg, catalog=catalog, model=model, history=history, epochs=best_epoch)
