"""The bidirectional self-attention sequence encoder shared by BERT4Rec and S3-Rec.

BERT4Rec (Sun et al., CIKM'19, §3.3-3.4): item embedding + learnable position embedding, LayerNorm and
dropout, then ``layers`` Transformer blocks (multi-head self-attention over every position, both
directions, GELU feed-forward). S3-Rec (Zhou et al., CIKM'20) pre-trains the same bidirectional
encoder. Sequences are left-padded with PAD (0); index ``n_items`` is the [MASK] token.

:meth:`SequenceEncoder.user_state` reads a user: the history shifted left by one with [MASK] in the
newest position, i.e. "which item comes next", BERT4Rec's own way of predicting for a user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from contract.ids import PAD
from contract.schema import DEFAULT_MAX_LEN
from trainer.baselines.sequences import trim_padding


@dataclass(frozen=True)
class EncoderConfig:
    """``n_items`` counts the PAD and OOV rows; the [MASK] token gets index ``n_items``."""

    n_items: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = DEFAULT_MAX_LEN
    dropout: float = 0.1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SequenceEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=PAD)
        self.position = nn.Embedding(cfg.max_len, cfg.dim)
        for emb in (self.item, self.position):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[PAD].zero_()
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, activation="gelu", batch_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    @property
    def mask_token(self) -> int:
        return self.cfg.n_items

    def item_table(self) -> torch.Tensor:
        """Embeddings of the real vocabulary (PAD, OOV and items; not [MASK]): ``[n_items, dim]``."""
        return self.item.weight[: self.cfg.n_items]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``items [B, L]`` (L <= max_len, left-padded; every row has a non-PAD token) → ``[B, L, dim]``.

        Positions count from the newest (right-most) column, so a window cut to its real length (see
        :func:`~trainer.baselines.sequences.trim_padding`) is encoded exactly as the full-width one.
        """
        x = self.item(items) + self.position.weight[-items.shape[1] :].unsqueeze(0)
        x = self.dropout(self.norm(x))
        return self.blocks(x, src_key_padding_mask=items == PAD)

    def with_next_mask(self, history: torch.Tensor) -> torch.Tensor:
        """``history [B, L]`` shifted left by one, [MASK] in the newest position."""
        newest = torch.full_like(history[:, :1], self.mask_token)
        return torch.cat((history[:, 1:], newest), dim=1)

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, dim]``: the encoder's output at a [MASK] appended after the user's clicks."""
        return self.forward(trim_padding(self.with_next_mask(history)))[:, -1]
