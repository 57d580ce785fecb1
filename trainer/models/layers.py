"""Small building blocks shared by the extractor variants: MLPs, task towers, sequence pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear + ReLU stack; every layer is followed by ReLU (the caller adds a logit layer if any)."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers += [nn.Linear(dim, width), nn.ReLU()]
            dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TaskTower(nn.Module):
    """A task's private MLP: hidden ReLU layers, then one logit.

    The paper's ``[512, 256, 128, 64, 2]`` ends in a 2-way softmax; a single logit with a sigmoid is
    the same model (the softmax over two logits only depends on their difference) at half the last
    layer's cost. The last hidden layer's output (64-d) is the task's interaction knowledge K_ui.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.body = MLP(in_dim, hidden)
        self.logit = nn.Linear(self.body.out_dim, 1)
        self.knowledge_dim = self.body.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit [B], penultimate [B, knowledge_dim])``."""
        hidden = self.body(x)
        return self.logit(hidden).squeeze(-1), hidden


def packed_mean(values: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per-row mean of packed ``values [N, D]`` (``row [N]`` = owning row); 0 for empty rows."""
    total = values.new_zeros((n_rows, values.shape[-1])).index_add(0, row, values)
    count = torch.bincount(row, minlength=n_rows).clamp_min(1).to(values.dtype)
    return total / count.unsqueeze(-1)
