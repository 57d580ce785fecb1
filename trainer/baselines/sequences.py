"""Click sequences for the sequence pre-training baselines (BERT4Rec, S3-Rec), and their masks.

- :class:`ItemCatalog`: the pre-training log's item vocabulary with each item's attributes (category,
  shop): the item side of both models and the attributes of S3-Rec's AAP/MAP objectives.
- :func:`click_windows`: every user's super-domain clicks in time order, cut into windows of at most
  ``max_len`` from the most recent click backwards, left-padded like the downstream histories
  (:class:`~trainer.data.sequences.HistoryIndex`), so the last position is always a real click.
- :func:`row_histories`: a downstream row's window of its user's super-domain clicks strictly before the
  row (the same :class:`HistoryIndex` the downstream model and KEEP's knowledge use: nothing leaks).
- :func:`cloze_mask` and :func:`segment_mask`: the masks of the Cloze and segment objectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from contract.ids import PAD, RESERVED, Vocab, Vocabs
from trainer.data.dataset import EncodedLog


@dataclass(frozen=True)
class ItemCatalog:
    """Item, category and shop vocabularies of a log; per item index its category and shop index."""

    vocabs: Vocabs
    item_category: np.ndarray  # [n_items] int64 (PAD/OOV rows map to PAD)
    item_shop: np.ndarray

    @classmethod
    def build(cls, log: pd.DataFrame) -> ItemCatalog:
        vocabs = Vocabs.build(log)
        first = log.drop_duplicates("item_id")
        rows = vocabs.item.lookup(first["item_id"].to_numpy())
        category = np.zeros(len(vocabs.item), dtype=np.int64)
        shop = np.zeros(len(vocabs.item), dtype=np.int64)
        category[rows] = vocabs.category.lookup(first["category_id"].to_numpy())
        if vocabs.shop is not None:
            shop[rows] = vocabs.shop.lookup(first["shop_id"].to_numpy())
        return cls(vocabs=vocabs, item_category=category, item_shop=shop)

    @property
    def n_items(self) -> int:
        return len(self.vocabs.item)

    @property
    def n_categories(self) -> int:
        return len(self.vocabs.category)

    @property
    def n_shops(self) -> int:
        return len(self.vocabs.shop) if self.vocabs.shop is not None else RESERVED

    def to_json(self) -> dict[str, Any]:
        return {
            "vocabs": self.vocabs.to_json(),
            "item_category": self.item_category.tolist(),
            "item_shop": self.item_shop.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemCatalog:
        return cls(
            vocabs=Vocabs.from_json(data["vocabs"]),
            item_category=np.asarray(data["item_category"], dtype=np.int64),
            item_shop=np.asarray(data["item_shop"], dtype=np.int64),
        )


def click_windows(log: pd.DataFrame, items: Vocab, max_len: int, min_len: int = 2) -> np.ndarray:
    """``[n_windows, max_len]`` item indices: each user's clicks (time order) cut from the newest back."""
    clicks = log[log["click"] == 1]
    user = pd.factorize(clicks["user_id"].astype(str))[0]
    order = np.lexsort((clicks["ts"].to_numpy(), user))
    user, item = user[order], items.lookup(clicks["item_id"].to_numpy())[order]
    if len(user) == 0:
        return np.zeros((0, max_len), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    counts = np.diff(np.r_[starts, len(user)])
    rank = np.arange(len(user)) - np.repeat(starts, counts)
    from_end = np.repeat(counts, counts) - 1 - rank  # 0 = the user's newest click
    window = pd.factorize(pd.Series(user).astype(str) + ":" + pd.Series(from_end // max_len).astype(str))[0]
    out = np.full((window.max() + 1, max_len), PAD, dtype=np.int64)
    out[window, max_len - 1 - from_end % max_len] = item
    return out[(out != PAD).sum(1) >= min_len]


def row_histories(
    catalog: ItemCatalog, rows: pd.DataFrame, history_from: pd.DataFrame, max_len: int
) -> EncodedLog:
    """``rows`` encoded with the catalog's vocabularies; histories = super-domain clicks before each row."""
    vocabs = Vocabs(
        user=Vocab.build(pd.concat([rows["user_id"], history_from["user_id"]]).to_numpy()),
        item=catalog.vocabs.item,
        category=catalog.vocabs.category,
        shop=catalog.vocabs.shop,
    )
    return EncodedLog.encode(rows.reset_index(drop=True), vocabs, history_from=history_from, max_len=max_len)


def cloze_mask(items: torch.Tensor, prob: float, last_only: float, gen: torch.Generator) -> torch.Tensor:
    """BERT4Rec's mask: each real position with probability ``prob``; a share ``last_only`` of the
    sequences mask only their newest item (the next-item case the user representation is read in).
    Every sequence gets at least one masked position."""
    real = items != PAD
    mask = (torch.rand(items.shape, generator=gen) < prob) & real
    only_last = torch.rand(items.shape[0], generator=gen) < last_only
    mask[only_last] = False
    mask[:, -1] |= only_last | ~mask.any(1)
    return mask


def segment_mask(items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """S3-Rec's segment: per sequence one contiguous run of real positions, 1 .. half its length."""
    n = (items != PAD).sum(1)
    length = 1 + (torch.rand(n.shape, generator=gen) * torch.clamp(n // 2, min=1)).long()
    first = items.shape[1] - n  # first real position (left padding)
    start = first + (torch.rand(n.shape, generator=gen) * (n - length + 1)).long()
    pos = torch.arange(items.shape[1]).unsqueeze(0)
    return (pos >= start.unsqueeze(1)) & (pos < (start + length).unsqueeze(1))


def trim_padding(items: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are PAD in every row (left padding): the same encoding, less work."""
    real = (items != PAD).any(0).nonzero()
    return items[:, int(real[0]) :] if len(real) else items[:, -1:]


def item_softmax_loss(
    query: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: int,
    gen: torch.Generator,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``targets [N]`` under a softmax of ``query [N, d] · items[j]`` (+ ``bias[j]``).

    Over every item when ``negatives`` is 0 or the table is that small; otherwise a sampled softmax:
    the target against ``negatives`` items drawn uniformly (shared by the batch; a draw equal to the
    row's target is ignored). Uniform draws need no log-Q correction: it is the same for every item.
    """
    n_items = items.shape[0]
    if negatives <= 0 or negatives >= n_items - RESERVED:
        logits = query @ items.T + (bias if bias is not None else 0.0)
        return torch.nn.functional.cross_entropy(logits, targets)
    drawn = torch.randint(RESERVED, n_items, (negatives,), generator=gen)
    positive = (query * items[targets]).sum(-1, keepdim=True)  # [N, 1]
    negative = query @ items[drawn].T  # [N, negatives]
    if bias is not None:
        positive = positive + bias[targets].unsqueeze(1)
        negative = negative + bias[drawn].unsqueeze(0)
    negative = negative.masked_fill(drawn.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat((positive, negative), dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros_like(targets))
