"""The downstream CTR model and its knowledge plug-ins (paper §3.1, §4.3).

TorchRec style: small modules composed by :class:`DownstreamModel`, a dataclass config
(:class:`contract.downstream.DownstreamConfig`, shared with the trainer and the artifact), a typed
:class:`Batch`, and the training loop outside (``trainer.train``).

- :class:`SparseArch`: id embeddings (user, item, category, shop) and the behaviour sequence.
- :class:`SoftmaxTargetAttention`: DIN-style attention of the candidate over the user's clicked items. The
  first layer on ``[q, k, q-k, q*k]`` is split as ``(Wq+Wd)q + (Wk-Wd)k + Wp(q*k)`` (same function
  class), so the key projection is computed once per user at serving time, not per candidate.
- :class:`CoAction`: CAN-like co-action unit: the candidate item's embedding *is* the weights of a
  tiny MLP applied to each history item; kept small (8 → 4 → 4).
- :class:`OverArch`: the MLP (default [200, 80]) → logit; ``addends`` are added to a layer's output.
- :class:`PlugIn`: ``h^k = MLP(K)``, added to the m-th MLP layer's output, ``h'_m = h_m + h^k``. The
  plug-ins live in ``plugins`` (a ModuleDict by knowledge name), so the base modules and their parameter
  names never change: a base model's state dict loads into a model with plug-ins, whose last layer is
  zero-initialised, giving exactly the base model's outputs at step 0.

Shapes: the history tensors and ``user`` may have a leading dimension of 1 with ``B`` candidates, which
is how :meth:`DownstreamModel.score_user` serves one user and N candidates without copying history.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from contract.artifact import Artifact
from contract.downstream import DownstreamConfig


@dataclass
class Batch:
    user: Tensor  # [B] or [1]
    item: Tensor  # [B]
    category: Tensor  # [B]
    shop: Tensor  # [B]
    hist_item: Tensor  # [B, L] or [1, L]; 0 = padding
    hist_category: Tensor  # [B, L] or [1, L]
    knowledge: dict[str, Tensor] = field(default_factory=dict)  # name → [B, D]
    label: Tensor | None = None  # [B] float


#: The shared-history fast paths (:meth:`SoftmaxTargetAttention.shared`, :class:`CoAction`) serve one user's
#: history for all candidates. They run only without autograd (training keeps the per-row formula) and
#: can be switched off (``keep bench ranker`` measures both: its ``reference`` lever).
SHARED_HISTORY_FAST_PATH = True


def shared_path(t: Tensor) -> bool:
    return SHARED_HISTORY_FAST_PATH and not (torch.is_grad_enabled() and t.requires_grad)


class SparseArch(nn.Module):
    def __init__(self, cfg: DownstreamConfig) -> None:
        super().__init__()
        d = cfg.emb_dim
        self.user = nn.Embedding(cfg.n_users, d, padding_idx=0) if cfg.use_user_id else None
        self.item = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.category = nn.Embedding(cfg.n_categories, d, padding_idx=0)
        self.shop = nn.Embedding(cfg.n_shops, d, padding_idx=0)
        for emb in (self.user, self.item, self.category, self.shop):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.05)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def query(self, batch: Batch) -> Tensor:
        """The candidate as the attention sees it: ``[item, category]``, [B, 2d]."""
        return torch.cat([self.item(batch.item), self.category(batch.category)], dim=-1)

    def keys(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """History keys [b, L, 2d] and mask [b, L]."""
        keys = torch.cat([self.item(batch.hist_item), self.category(batch.hist_category)], dim=-1)
        return keys, batch.hist_item > 0


class SoftmaxTargetAttention(nn.Module):
    """Attention over a padded history, weights softmax-normalised over the real behaviours (the
    extractor's :class:`trainer.models.din.PackedTargetAttention` is packed and unnormalised)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(dim, hidden)
        self.key_proj = nn.Linear(dim, hidden, bias=False)
        self.prod_proj = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query [B, D], keys [b, L, D], mask [b, L] with b ∈ {1, B} → [B, D]."""
        # (a quantized copy's projections have no float weight tensors: it keeps the per-row formula)
        if keys.shape[0] == 1 and len(query) > 1 and shared_path(query) and self.plain_weights():
            return self.shared(query, keys[0], mask)
        hidden = (
            self.query_proj(query).unsqueeze(1)
            + self.key_proj(keys)
            + self.prod_proj(query.unsqueeze(1) * keys)
        )
        scores = self.out(torch.relu(hidden)).squeeze(-1)  # [B, L]
        scores = scores.masked_fill(~mask, -1e9)
        weights = torch.softmax(scores, dim=-1) * mask  # an empty history gives zeros, not NaN
        return torch.einsum("bl,bld->bd", weights, keys.expand(len(query), -1, -1))

    def plain_weights(self) -> bool:
        return isinstance(self.key_proj.weight, Tensor) and isinstance(self.prod_proj.weight, Tensor)

    def shared(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` for one history shared by all candidates (serving): keys [L, D], mask [1, L].

        The same function regrouped: ``Wk k + Wp (q ⊙ k) = (Wk + Wp diag(q)) k``, so the key and product
        projections of every (candidate, click) pair are one GEMM, ``keys @ M`` with ``M[d, b, h] =
        Wk[h, d] + q[b, d] Wp[h, d]``, written straight into the ``[L, B, H]`` hidden layer: no
        ``[B, L, D]`` product temporary and three fewer passes over ``[B, L, H]``. Float rounding differs
        from :meth:`forward` by ~1e-8 (tests/unit/test_ranker_speed.py)."""
        return shared_history_attention(
            query,
            keys,
            mask,
            self.query_proj.weight,
            self.query_proj.bias,
            self.key_proj.weight,
            self.prod_proj.weight,
            self.out.weight,
            self.out.bias,
        )


def shared_history_attention(
    query: Tensor,
    keys: Tensor,
    mask: Tensor,
    query_w: Tensor,
    query_b: Tensor,
    key_w: Tensor,
    prod_w: Tensor,
    out_w: Tensor,
    out_b: Tensor,
) -> Tensor:
    """:meth:`SoftmaxTargetAttention.shared` over its weights: a plain function, so that the TorchScript
    serving graph (:mod:`ranker.scripted`) runs this same code."""
    n, d = query.shape[0], query.shape[1]
    h = key_w.shape[0]
    m = torch.addcmul(
        key_w.t().unsqueeze(1),  # [D, 1, H]
        query.t().unsqueeze(2),  # [D, B, 1]
        prod_w.t().unsqueeze(1),  # [D, 1, H]
    )
    hidden = (keys @ m.view(d, n * h)).view(-1, n, h)  # [L, B, H]
    hidden += nn.functional.linear(query, query_w, query_b)
    hidden.relu_()
    scores = (hidden @ out_w[0]).t() + out_b  # [B, L]
    scores = scores.masked_fill(~mask, -1e9)
    weights = torch.softmax(scores, dim=-1) * mask
    return weights @ keys


class CoAction(nn.Module):
    """CAN's co-action unit, small: per item a 8x4 and a 4x4 weight matrix drawn from an embedding."""

    def __init__(self, cfg: DownstreamConfig) -> None:
        super().__init__()
        self.d_in = cfg.coaction_in
        self.h1, self.h2 = cfg.coaction_hidden
        self.weights = nn.Embedding(cfg.n_items, self.d_in * self.h1 + self.h1 * self.h2, padding_idx=0)
        self.inputs = nn.Embedding(cfg.n_items, self.d_in, padding_idx=0)
        nn.init.normal_(self.weights.weight, std=0.1)
        nn.init.normal_(self.inputs.weight, std=0.1)

    @property
    def out_dim(self) -> int:
        return self.h2

    def forward(self, item: Tensor, hist_item: Tensor) -> Tensor:
        """item [B], hist_item [b, L] → masked mean over history of the item-parameterised MLP, [B, h2]."""
        params = self.weights(item)
        if hist_item.shape[0] == 1 and len(item) > 1 and shared_path(params):
            # one history for all candidates (serving): the first layer of every candidate is one GEMM
            return shared_history_coaction(
                params, self.inputs(hist_item[0]), hist_item, self.d_in, self.h1, self.h2
            )
        w1, w2 = coaction_weights(params, self.d_in, self.h1, self.h2)
        x = self.inputs(hist_item)  # [b, L, d_in]
        return masked_history_mean(torch.tanh(torch.tanh(x @ w1) @ w2), hist_item)  # of [B, L, h2]


def coaction_weights(params: Tensor, d_in: int, h1: int, h2: int) -> tuple[Tensor, Tensor]:
    """Each candidate's two co-action layers, ``[B, d_in, h1]`` and ``[B, h1, h2]``, from its embedding."""
    return params[:, : d_in * h1].view(-1, d_in, h1), params[:, d_in * h1 :].view(-1, h1, h2)


def masked_history_mean(h: Tensor, hist_item: Tensor) -> Tensor:
    """Mean of ``h`` [B, L, k] over the real clicks of ``hist_item`` [b, L] (padding 0), [B, k]."""
    mask = (hist_item > 0).to(h.dtype).unsqueeze(-1)
    return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def shared_history_coaction(
    params: Tensor, hist_inputs: Tensor, hist_item: Tensor, d_in: int, h1: int, h2: int
) -> Tensor:
    """:class:`CoAction` for one history shared by every candidate: ``params`` [B, ...] the candidates'
    co-action embeddings, ``hist_inputs`` [L, d_in] the history's inputs, ``hist_item`` [1, L]. A plain
    function, so that the TorchScript serving graph (:mod:`ranker.scripted`) runs this same code."""
    w1, w2 = coaction_weights(params, d_in, h1, h2)
    n, length = params.shape[0], hist_item.shape[1]
    x1 = hist_inputs @ w1.permute(1, 0, 2).reshape(d_in, n * h1)
    h = torch.tanh(torch.tanh(x1.view(length, n, h1).transpose(0, 1)) @ w2)  # [B, L, h2]
    return masked_history_mean(h, hist_item)


class OverArch(nn.Module):
    def __init__(self, in_dim: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        dims = (in_dim, *layers)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.logit = nn.Linear(dims[-1], 1)

    def forward(self, x: Tensor, addends: dict[int, Tensor] | None = None) -> Tensor:
        """``addends[m]`` (1-based) is added to the m-th layer's output after its activation."""
        for m, layer in enumerate(self.layers, start=1):
            x = torch.relu(layer(x))
            if addends and m in addends:
                x = x + addends[m]
        return self.logit(x).squeeze(-1)

    def until(self, x: Tensor, m: int) -> Tensor:
        """The m-th layer's output after its activation, before any addend: ``forward``'s first half."""
        for layer in itertools.islice(self.layers, m):  # (slicing a ModuleList builds a new one per call)
            x = torch.relu(layer(x))
        return x

    def after(self, h: Tensor, m: int, addend: Tensor | None) -> Tensor:
        """``forward``'s second half from ``h = until(x, m)``: the same operations in the same order, so
        ``after(until(x, m), m, a)`` equals ``forward(x, {m: a})`` bit for bit."""
        if addend is not None:
            h = h + addend
        for layer in itertools.islice(self.layers, m, None):
            h = torch.relu(layer(h))
        return self.logit(h).squeeze(-1)


class PlugIn(nn.Module):
    """``h^k = MLP(K)``: standardise K (statistics fitted once on training knowledge), then a 2-layer MLP.

    The last layer starts at zero, so a freshly plugged model predicts exactly what its base did.
    """

    mean: Tensor
    scale: Tensor

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def fit_normaliser(self, knowledge: Tensor) -> None:
        """Per-column mean and std from a sample of training knowledge (constant columns keep scale 1)."""
        self.mean.copy_(knowledge.mean(0))
        std = knowledge.std(0)
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, knowledge: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden((knowledge - self.mean) / self.scale)))


def joined_features(
    query: Tensor,
    keys: Tensor,
    mask: Tensor,
    attended: Tensor,
    shop: Tensor,
    coaction: Tensor,
    user: Tensor | None,
) -> Tensor:
    """The over-arch input: candidate ``[item, category]``, shop, attended history, mean history,
    co-action (and the user id's embedding), broadcast over the candidates."""
    n = query.shape[0]
    m = mask.to(keys.dtype).unsqueeze(-1)
    mean_hist = ((keys * m).sum(1) / m.sum(1).clamp(min=1.0)).expand(n, -1)
    parts = [query, shop, attended, mean_hist, coaction]
    if user is not None:
        parts.append(user.expand(n, -1))
    return torch.cat(parts, dim=-1)


class DownstreamModel(nn.Module):
    def __init__(self, cfg: DownstreamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.emb_dim
        self.sparse = SparseArch(cfg)
        self.attention = SoftmaxTargetAttention(2 * d, cfg.attention_hidden)
        self.coaction = CoAction(cfg)
        # candidate [item, category, shop] + attended history + mean history + co-action (+ user id)
        in_dim = 3 * d + 2 * d + 2 * d + self.coaction.out_dim + (d if cfg.use_user_id else 0)
        self.over = OverArch(in_dim, cfg.mlp)
        self.plugins = nn.ModuleDict(
            {
                name: PlugIn(dim, cfg.mlp[cfg.plugin_layer - 1], cfg.plugin_hidden)
                for name, dim in cfg.plugins.items()
            }
        )

    def base_features(self, batch: Batch) -> Tensor:
        sp = self.sparse
        query = sp.query(batch)
        keys, mask = sp.keys(batch)
        attended = self.attention(query, keys, mask)
        return joined_features(
            query,
            keys,
            mask,
            attended,
            sp.shop(batch.shop),
            self.coaction(batch.item, batch.hist_item),
            sp.user(batch.user) if sp.user is not None else None,
        )

    def forward(self, batch: Batch) -> Tensor:
        """Logits [B]. Every plug-in in ``cfg.plugins`` needs its knowledge in ``batch.knowledge``."""
        addend = self.plugin_addend(batch.knowledge)
        addends = {self.cfg.plugin_layer: addend} if addend is not None else None
        return self.over(self.base_features(batch), addends)

    def plugin_addend(self, knowledge: dict[str, Tensor]) -> Tensor | None:
        """``h^k``: the sum of the plug-ins' outputs (None for a model without plug-ins)."""
        addend: Tensor | None = None
        for name, plugin in self.plugins.items():
            if name not in knowledge:
                raise KeyError(f"batch has no knowledge {name!r} for its plug-in")
            h = plugin(knowledge[name])
            addend = h if addend is None else addend + h
        return addend

    def before_plugins(self, batch: Batch) -> Tensor:
        """``h_m``, everything that does not depend on knowledge: serving computes it while the
        knowledge is still being read, then :meth:`after_plugins` (bit-exact to ``forward``)."""
        return self.over.until(self.base_features(batch), self.cfg.plugin_layer)

    def after_plugins(self, h_m: Tensor, knowledge: dict[str, Tensor] | None) -> Tensor:
        """Logits from ``h_m``; ``knowledge=None`` runs the base model (the plug-ins' addend zeroed)."""
        addend = None if knowledge is None else self.plugin_addend(knowledge)
        return self.over.after(h_m, self.cfg.plugin_layer, addend)

    @torch.no_grad()
    def score_user(self, batch: Batch) -> Tensor:
        """Probabilities for one user's candidates: ``user``/history with leading dim 1, items [N]."""
        return torch.sigmoid(self(batch))

    def base_parameter_names(self) -> list[str]:
        return [k for k in self.state_dict() if not k.startswith("plugins.")]


def load_base_into(model: DownstreamModel, state: dict[str, Tensor]) -> list[str]:
    """Load a (possibly plug-in-less) state dict; every base tensor must be there and fit.

    Returns the plug-in keys that were not in ``state`` (those start fresh). Plug-ins in ``state`` that
    the model does not have are an error: dropping trained knowledge silently is never intended.
    """
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ValueError(f"state has parameters the model does not: {unexpected[:5]}")
    missing_base = [k for k in own if k not in state and not k.startswith("plugins.")]
    if missing_base:
        raise ValueError(f"state lacks base parameters: {missing_base[:5]}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def build_model(artifact: Artifact) -> DownstreamModel:
    """The artifact's model with its trained weights, in eval mode."""
    model = DownstreamModel(artifact.config)
    model.load_state_dict(artifact.state)
    model.eval()
    return model
