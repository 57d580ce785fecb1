"""S3-Rec (Zhou et al., CIKM'20): self-supervised pre-training by mutual-information maximisation.

The four objectives of §4.2 on the bidirectional encoder, each an InfoNCE-style softmax of a bilinear
score ``f(x, y) = x^T W y`` against every candidate of the other side (the paper's eqs. 7-12; its code
samples one negative instead):

- **AAP** (associated attribute prediction): an item's embedding ↔ its attributes (here the item's
  category and shop, one softmax per attribute type), for the unmasked items of the window;
- **MIP** (masked item prediction): the encoder output at a [MASK] ↔ the masked item;
- **MAP** (masked attribute prediction): the output at a [MASK] ↔ the masked item's attributes;
- **SP** (segment prediction): the window with one contiguous segment masked ↔ that segment encoded
  alone; the other windows' segments in the batch are the negatives. A sequence is represented by the
  mean of the encoder outputs over its real positions.

The paper's loss weights (its code's defaults): AAP 0.2, MIP 1, MAP 1, SP 0.5. Downstream use is the
same as BERT4Rec's: the output at an appended [MASK], scored against items through ``W_MIP``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.ids import PAD
from trainer.baselines.encoder import EncoderConfig, SequenceEncoder
from trainer.baselines.sequences import cloze_mask, item_softmax_loss, segment_mask, trim_padding

OBJECTIVES = ("aap", "mip", "map", "sp")


@dataclass(frozen=True)
class S3RecConfig:
    mask_prob: float = 0.2
    last_only: float = 0.1
    #: MIP's softmax over this many uniform negatives (0: every item).
    negatives: int = 512
    aap: float = 0.2
    mip: float = 1.0
    map: float = 1.0
    sp: float = 0.5

    def weight(self, objective: str) -> float:
        return float(getattr(self, objective))


class S3Rec(nn.Module):
    objectives = OBJECTIVES

    item_category: torch.Tensor
    item_shop: torch.Tensor

    def __init__(
        self,
        encoder: EncoderConfig,
        item_category: np.ndarray,
        item_shop: np.ndarray,
        n_categories: int,
        n_shops: int,
        cfg: S3RecConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg or S3RecConfig()
        self.encoder = SequenceEncoder(encoder)
        d = encoder.dim
        self.category = nn.Embedding(n_categories, d)
        self.shop = nn.Embedding(n_shops, d)
        for table in (self.category, self.shop):
            nn.init.normal_(table.weight, std=0.02)
        self.register_buffer("item_category", torch.as_tensor(item_category, dtype=torch.int64))
        self.register_buffer("item_shop", torch.as_tensor(item_shop, dtype=torch.int64))
        self.w = nn.ModuleDict({name: nn.Linear(d, d, bias=False) for name in OBJECTIVES})

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """``W_MIP h``: the vector an item embedding is scored against (MIP's bilinear form)."""
        return self.w["mip"](hidden)

    def _attribute_nce(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Sum over attribute types of the softmax loss of ``x [N, d]`` against every attribute."""
        loss = x.new_zeros(())
        for table, owner in ((self.category, self.item_category), (self.shop, self.item_shop)):
            loss = loss + F.cross_entropy(x @ table.weight.T, owner[items])
        return loss

    def _mean_over(self, hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        w = real.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)

    def objective_losses(
        self, items: torch.Tensor, mask: torch.Tensor, segment: torch.Tensor, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The four losses for windows ``items [B, L]`` with item ``mask`` and ``segment`` positions."""
        real = items != PAD
        token = self.encoder.mask_token
        hidden = self.encoder(items.masked_fill(mask, token))
        unmasked = real & ~mask
        out: dict[str, torch.Tensor] = {}
        if unmasked.any():
            out["aap"] = self._attribute_nce(
                self.w["aap"](self.encoder.item(items[unmasked])), items[unmasked]
            )
        else:
            out["aap"] = hidden.new_zeros(())
        at_mask, target = hidden[mask], items[mask]
        table = self.encoder.item_table()
        out["mip"] = item_softmax_loss(self.w["mip"](at_mask), table, target, self.cfg.negatives, gen)
        out["map"] = self._attribute_nce(self.w["map"](at_mask), target)
        context = self._mean_over(self.encoder(items.masked_fill(segment, token)), real)
        alone = self._mean_over(self.encoder(items.masked_fill(~segment, PAD)), segment)
        scores = self.w["sp"](context) @ alone.T  # [B, B]: the diagonal pairs a window with its own segment
        out["sp"] = F.cross_entropy(scores, torch.arange(len(items)))
        return out

    def losses(self, items: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        items = trim_padding(items)
        mask = cloze_mask(items, self.cfg.mask_prob, self.cfg.last_only, gen)
        raw = self.objective_losses(items, mask, segment_mask(items, gen), gen)
        return {name: self.cfg.weight(name) * loss for name, loss in raw.items()}
