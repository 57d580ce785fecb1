"""Offline knowledge K(u, i) from a trained extractor, for experiments (paper Tables 3, 4 and 8).

Usage::

    from trainer.knowledge_fn import KnowledgeFn

    kfn = KnowledgeFn.load("runs/extractor")            # any strategy
    kfn.blocks                                          # {"ku": 48, "ki": 48, "kui:click": 64, ...}
    log = kfn.encode(train_df, super_df)                # raw ids → the EXTRACTOR's vocabularies
    K = kfn.matrix(log, ("ku", "ki", "kui:click"))      # np.float32 [len(train_df), 160]
    Kb = kfn.tensor(log, rows, ("ku", "ki"))            # torch [len(rows), 96] inside a loop

Blocks: ``full`` → ``ku`` (user-id embedding), ``ki`` (item, shop, category embeddings),
``kui:<task>`` (the task tower's 64-d last hidden layer). ``decomposition`` → ``ku_hat``, ``ki_hat``,
``ku_hat*ki_hat``; ``degeneration`` → ``kuc_hat`` (every task's 64-d block, concatenated);
``serving`` → all four, i.e. what GKC returns. Columns follow the order of ``blocks``.

Histories: a row's behaviour sequence is its user's last ``max_len`` clicks in ``history_from`` strictly
before the row's ``ts``, restricted by default to the extractor's training window
(``upto_window=True``). For downstream rows after the pre-training window (the paper's setting) this
is exactly the history the exported bundle used, so offline K̂ equals what GKC serves. Pass
``upto_window=False`` to let histories run up to each row (super-domain clicks only, never the
downstream rows' own clicks unless you include them in ``history_from``).
Ids the extractor never saw map to its OOV rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from contract.schema import day_of
from trainer.data.dataset import EncodedLog
from trainer.models.batch import feature_batch
from trainer.models.checkpoint import LoadedExtractor, load_extractor


class KnowledgeFn:
    """A frozen extractor that maps downstream rows to knowledge matrices."""

    def __init__(self, loaded: LoadedExtractor) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnowledgeFn:
        return cls(load_extractor(path))

    @property
    def strategy(self) -> str:
        return self.loaded.strategy

    @property
    def blocks(self) -> dict[str, int]:
        """Every block this extractor provides, with its width."""
        return self.model.block_dims()

    def dim(self, blocks: Sequence[str]) -> int:
        self.model.check_blocks(blocks)
        dims = self.blocks
        return sum(dims[b] for b in blocks)

    def encode(
        self, rows: pd.DataFrame, history_from: pd.DataFrame, *, upto_window: bool = True
    ) -> EncodedLog:
        """``rows`` encoded with the extractor's vocabularies and super-domain histories."""
        if upto_window:
            last = self.loaded.window[1]
            history_from = history_from[day_of(history_from["ts"].to_numpy()) <= last]
        return EncodedLog.encode(
            rows.reset_index(drop=True),
            self.loaded.vocabs,
            history_from=history_from,
            max_len=self.model.cfg.max_len,
        )

    def tensor(self, log: EncodedLog, rows: np.ndarray, blocks: Sequence[str]) -> torch.Tensor:
        """``[len(rows), dim(blocks)]`` float32, no gradient."""
        self.model.check_blocks(blocks)
        with torch.inference_mode():
            out = self.model.knowledge(feature_batch(log, rows), blocks)
            return torch.cat([out[b] for b in blocks], dim=-1).clone()

    def matrix(self, log: EncodedLog, blocks: Sequence[str], *, batch_size: int = 8192) -> np.ndarray:
        """The whole log's knowledge, ``[len(log), dim(blocks)]`` float32, batched."""
        out = np.empty((len(log), self.dim(blocks)), dtype=np.float32)
        for start in range(0, len(log), batch_size):
            rows = np.arange(start, min(start + batch_size, len(log)))
            out[rows] = self.tensor(log, rows, blocks).numpy()
        return out


def knowledge_matrix(
    extractor: str | os.PathLike[str],
    rows: pd.DataFrame,
    super_df: pd.DataFrame,
    blocks: Sequence[str] | None = None,
    *,
    upto_window: bool = True,
) -> np.ndarray:
    """One call: load, encode and compute (``blocks`` default: every block, in ``kfn.blocks`` order)."""
    kfn = KnowledgeFn.load(extractor)
    names = list(kfn.blocks) if blocks is None else list(blocks)
    return kfn.matrix(kfn.encode(rows, super_df, upto_window=upto_window), names)
