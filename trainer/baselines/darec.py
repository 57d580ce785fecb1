"""DARec (Yuan et al., 2019) for CTR: DANN-style domain adaptation between the super- and sub-domain.

DARec extracts rating patterns with a shared encoder, trains a domain classifier on them through a
gradient-reversal layer (Ganin & Lempitsky's DANN), and predicts each domain's ratings with its own
head. Adapted to the KEEP paper's cross-domain setting (§6.1: source = super-domain rows of the training
days, target = the sub-domain rows):

- shared feature extractor: the base model's features (``DownstreamModel.base_features``: id
  embeddings, target attention, mean history, co-action), shared by both domains;
- sub-domain head: the base model's own MLP, so the deployed sub-domain model *is* the base
  architecture (:attr:`DARec.target`);
- super-domain head: a second MLP of the same shape;
- domain classifier: an MLP on the shared features behind :class:`GradientReversal`: the classifier
  learns to tell the domains apart while the reversed gradient pushes the shared features to make
  them indistinguishable. The reversal strength follows DANN's schedule ``2/(1+exp(-10 p)) - 1``, with
  ``p`` the progress through the first pass (full strength from the second pass on).

Loss per step: ``BCE_sub + source_weight * BCE_super``
``+ domain_weight * (BCE_domain(sub) + BCE_domain(super)) / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.downstream import DownstreamConfig
from ranker.model import Batch, DownstreamModel, OverArch


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


class GradientReversal(nn.Module):
    """Identity forward; multiplies the gradient by ``-strength`` backward."""

    def forward(self, x: Tensor, strength: float = 1.0) -> Tensor:
        return _Reverse.apply(x, strength)


def base_feature_dim(model: DownstreamModel) -> int:
    """Width of ``model.base_features``: the input of its MLP."""
    first = model.over.layers[0]
    assert isinstance(first, nn.Linear)
    return first.in_features


def dann_strength(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule: 0 at the start, → 1 as ``progress`` goes 0 → 1 (clipped there)."""
    return 2.0 / (1.0 + math.exp(-gamma * min(max(progress, 0.0), 1.0))) - 1.0


@dataclass(frozen=True)
class DARecConfig:
    #: What the domain classifier sees: ``user`` = the user's behaviour pattern (the mean of their
    #: history's shared embeddings: DARec's rating patterns), ``features`` = all of ``base_features``
    #: (the candidate item too).
    adapt: str = "user"
    domain_hidden: tuple[int, ...] = (64,)
    source_weight: float = 1.0
    domain_weight: float = 1.0


class DARec(nn.Module):
    def __init__(self, cfg: DownstreamConfig, darec: DARecConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.darec = darec or DARecConfig()
        self.target = DownstreamModel(cfg)
        in_dim = base_feature_dim(self.target)
        self.source_head = OverArch(in_dim, cfg.mlp)
        self.reverse = GradientReversal()
        domain_in = in_dim if self.darec.adapt == "features" else 2 * cfg.emb_dim
        self.domain = OverArch(domain_in, self.darec.domain_hidden)  # logit: 1 = sub-domain

    def forward(self, batch: Batch) -> Tensor:
        """Sub-domain click logits: exactly the base model's forward."""
        return self.target(batch)

    def domain_logits(self, features: Tensor, strength: float) -> Tensor:
        return self.domain(self.reverse(features, strength))

    def pattern(self, batch: Batch, features: Tensor) -> Tensor:
        """The domain classifier's input: the user's behaviour pattern, or all the shared features."""
        if self.darec.adapt == "features":
            return features
        keys, mask = self.target.sparse.keys(batch)
        m = mask.to(keys.dtype).unsqueeze(-1)
        return ((keys * m).sum(1) / m.sum(1).clamp(min=1.0)).expand(len(features), -1)

    def losses(self, sub: Batch, source: Batch, progress: float) -> dict[str, Tensor]:
        assert sub.label is not None and source.label is not None
        strength = dann_strength(progress)
        f_sub = self.target.base_features(sub)
        f_src = self.target.base_features(source)
        d_sub = self.domain_logits(self.pattern(sub, f_sub), strength)
        d_src = self.domain_logits(self.pattern(source, f_src), strength)
        domain = 0.5 * (
            F.binary_cross_entropy_with_logits(d_sub, torch.ones_like(d_sub))
            + F.binary_cross_entropy_with_logits(d_src, torch.zeros_like(d_src))
        )
        return {
            "sub": F.binary_cross_entropy_with_logits(self.target.over(f_sub), sub.label),
            "source": self.darec.source_weight
            * F.binary_cross_entropy_with_logits(self.source_head(f_src), source.label),
            "domain": self.darec.domain_weight * domain,
        }
