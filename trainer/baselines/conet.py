"""CoNet (Hu et al., CIKM'18) for CTR: collaborative cross networks between the super- and sub-domain.

CoNet runs one feed-forward network per domain on a shared embedding layer and joins them with cross
connections: at every layer transition ``l → l+1`` each network also receives the other's activation
through a transfer matrix ``H^l`` shared by both directions (eq. 3 of the paper):

    a_sub^{l+1}   = relu(W_sub^l a_sub^l + H^l a_super^l)
    a_super^{l+1} = relu(W_super^l a_super^l + H^l a_sub^l)

(the last transition into each domain's logit included). Both networks are trained jointly on the sum
of their domains' losses, so the cross units learn from both domains ("dual knowledge transfer").

The cross units start at zero: the two networks start apart (the sub-domain one as the base model's
MLP) and the transfer is learnt, instead of starting with the untrained super-domain network's
activations added, at full scale, into every layer of the sub-domain one. Chosen on the validation
day of the calibrated ``small`` world (docs/baselines.md: 0.6538 against 0.6382 with ``nn.Linear``'s
default initialisation, 3 seeds).

Adapted to the KEEP paper's cross-domain setting (§6.1): the shared layer is the base model's feature
layer (``DownstreamModel.base_features``: the id embeddings and behaviour-sequence features both domains
share), the sub-domain network is the base model's MLP, and the super-domain network an MLP of the same
shape. A row of either domain runs through both networks (the cross units need both activations); its
label trains the logit of its own domain.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.downstream import DownstreamConfig
from ranker.model import Batch, DownstreamModel, OverArch
from trainer.baselines.darec import base_feature_dim


class CrossTowers(nn.Module):
    """Two MLP towers of the same shape joined by shared cross units ``H^l`` at every transition."""

    def __init__(self, sub: OverArch, in_dim: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.sub = sub
        self.super = OverArch(in_dim, layers)
        dims = (*layers, 1)
        #: cross[l] maps layer l+1's activation (1-based) into the input of layer l+2 (or the logit).
        units = [nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(dims)]
        for unit in units:  # start apart; the transfer is learnt (module doc)
            nn.init.zeros_(unit.weight)
        self.cross = nn.ModuleList(units)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, in_dim]`` → ``(sub logit [B], super logit [B])``."""
        sub_layers = [*self.sub.layers, self.sub.logit]
        super_layers = [*self.super.layers, self.super.logit]
        a_sub = torch.relu(sub_layers[0](x))
        a_super = torch.relu(super_layers[0](x))
        for i, h in enumerate(self.cross, start=1):
            last = i == len(self.cross)
            z_sub = sub_layers[i](a_sub) + h(a_super)
            z_super = super_layers[i](a_super) + h(a_sub)
            a_sub, a_super = (z_sub, z_super) if last else (torch.relu(z_sub), torch.relu(z_super))
        return a_sub.squeeze(-1), a_super.squeeze(-1)


@dataclass(frozen=True)
class CoNetConfig:
    source_weight: float = 1.0


class CoNet(nn.Module):
    def __init__(self, cfg: DownstreamConfig, conet: CoNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.conet = conet or CoNetConfig()
        self.features = DownstreamModel(cfg)  # its base_features is the shared layer; its MLP the sub tower
        self.towers = CrossTowers(self.features.over, base_feature_dim(self.features), cfg.mlp)

    def logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.towers(self.features.base_features(batch))

    def forward(self, batch: Batch) -> Tensor:
        """Sub-domain click logits."""
        return self.logits(batch)[0]

    def losses(self, sub: Batch, source: Batch, progress: float) -> dict[str, Tensor]:
        assert sub.label is not None and source.label is not None
        return {
            "sub": F.binary_cross_entropy_with_logits(self.logits(sub)[0], sub.label),
            "source": self.conet.source_weight
            * F.binary_cross_entropy_with_logits(self.logits(source)[1], source.label),
        }
