"""BERT4Rec (Sun et al., CIKM'19): the Cloze objective on the users' super-domain click sequences.

Random positions of a click window are replaced by [MASK] and the bidirectional encoder predicts the
original item from both sides (§3.5). Only the masked positions are scored: their outputs go through
the paper's projection ``GELU(h W^P + b^P)`` and a softmax over the items, the output embedding tied to
the input item embedding, plus a per-item bias (§3.4, eq. 8). The softmax is sampled (512 uniform
negatives) unless ``negatives=0``: the full one over the small world's 20k items took 3/4 of a step's
time. A share of the windows masks only the newest click, the case that matches how a user is read
downstream (next item after the history).

Used downstream like any extractor (see :mod:`trainer.baselines.pretraining`): the user state at the
appended [MASK], the candidate's item embedding and their interaction feed the base model's plug-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.baselines.encoder import EncoderConfig, SequenceEncoder
from trainer.baselines.sequences import cloze_mask, item_softmax_loss, trim_padding


@dataclass(frozen=True)
class ClozeConfig:
    #: BERT4Rec's masking proportion ρ (the paper uses 0.2 on its densest data set, up to 0.6 on sparse ones).
    mask_prob: float = 0.2
    #: Share of windows that mask only their newest item.
    last_only: float = 0.1
    #: Sampled softmax over this many uniform negatives (0: every item, the paper's full softmax).
    negatives: int = 512


@dataclass
class ClozeOutput:
    loss: torch.Tensor
    #: ``[B, L]`` bool: the positions that were masked, i.e. the only ones scored.
    scored: torch.Tensor
    #: ``[n_masked, dim]``: the query of each scored position (row-major order).
    queries: torch.Tensor


class Bert4Rec(nn.Module):
    objectives = ("cloze",)

    def __init__(self, encoder: EncoderConfig, cloze: ClozeConfig | None = None) -> None:
        super().__init__()
        self.cloze_cfg = cloze or ClozeConfig()
        self.encoder = SequenceEncoder(encoder)
        d = encoder.dim
        self.projection = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(encoder.n_items))

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """``GELU(h W^P + b^P)``: the vector an item embedding is scored against."""
        return F.gelu(self.projection(hidden))

    def cloze(self, items: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> ClozeOutput:
        """Mask ``items`` where ``mask`` is set; cross-entropy of the original items at those positions."""
        hidden = self.encoder(items.masked_fill(mask, self.encoder.mask_token))
        query = self.query(hidden[mask])
        table = self.encoder.item_table()
        loss = item_softmax_loss(query, table, items[mask], self.cloze_cfg.negatives, gen, self.bias)
        return ClozeOutput(loss=loss, scored=mask, queries=query)

    def losses(self, items: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        items = trim_padding(items)
        mask = cloze_mask(items, self.cloze_cfg.mask_prob, self.cloze_cfg.last_only, gen)
        return {"cloze": self.cloze(items, mask, gen).loss}
