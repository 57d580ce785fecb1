"""DIN target attention (Zhou et al., KDD'18), written for CPU speed.

DIN scores each behaviour ``k`` against the candidate ``q`` with an MLP over ``[q, k, q - k, q * k]``.
The first layer of that MLP is linear, so ``W [q, k, q-k, q*k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q*k)``:
the ``q`` term is computed once per row instead of once per behaviour, and the ``q - k`` block (a
quarter of the input) disappears. Same function class, 20-25% faster. The hidden layers
use ReLU (DeepCTR's Dice spends a third of a step in BatchNorm) and the weights are not normalised
(DIN keeps the intensity of the interest). Sequences are packed: padding is never computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionConfig:
    hidden: tuple[int, ...] = (64, 16)


class PackedTargetAttention(nn.Module):
    """Pool the packed ``values`` of each row with weights from an MLP over (query, key) pairs, not
    normalised (the ranker's :class:`ranker.model.SoftmaxTargetAttention` pads and normalises)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 16)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("attention needs at least one hidden layer")
        first = hidden[0]
        self.query_proj = nn.Linear(dim, first)  # (Wq + Wd) q, with the layer's bias
        self.key_proj = nn.Linear(2 * dim, first, bias=False)  # [(Wk - Wd), Wp] @ [k, q*k]
        rest: list[nn.Module] = [nn.ReLU()]
        width = first
        for w in hidden[1:]:
            rest += [nn.Linear(width, w), nn.ReLU()]
            width = w
        rest.append(nn.Linear(width, 1))
        self.rest = nn.Sequential(*rest)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        row: torch.Tensor,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention over a packed sequence: only the real (non-padding) behaviours are scored.

        ``query [B, D]``; ``keys [N, D]`` every real behaviour of the batch, row-major; ``row [N]``
        the batch row each belongs to; ``values [N, Dv]`` (default: the keys). Returns ``[B, Dv]``;
        a row without behaviours gets zeros. Packing skips padding entirely: with a mean history of
        a few clicks out of 50, the [B, 50, ·] tensors of a padded implementation are mostly waste.
        """
        # index_select, not query[row]: the backward of advanced indexing accumulates with atomics
        # on CPU (run-to-run noise), index_select's does not, and resume must be bit-exact.
        q = query.index_select(0, row)
        pre = self.query_proj(query).index_select(0, row) + self.key_proj(torch.cat((keys, keys * q), dim=-1))
        scores = self.rest(pre)
        pooled = keys if values is None else values
        out = pooled.new_zeros((query.shape[0], pooled.shape[-1]))
        return out.index_add(0, row, scores * pooled)
