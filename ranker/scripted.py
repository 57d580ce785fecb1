"""The serving forward as a TorchScript graph: the same operations, run in C++ without the interpreter lock.

Why: inside the ranker the model step runs in a worker thread while the event loop (gRPC, the GKC and
Redis clients) runs in another. Eager PyTorch takes the interpreter lock back between its operations, so
the model waited on the event loop and the event loop on the model (docs/ranker.md, "Speed levers"). A
TorchScript method runs its whole graph with the lock released, and its interpreter dispatches each
operation without Python in between.

:class:`ServingGraph` is :class:`ranker.model.DownstreamModel`'s serving path arranged for
the TorchScript compiler: one user's history shared by every candidate, split at the plug-in layer
like ``before_plugins`` / ``after_plugins``. The arithmetic is the eager fast paths' own functions
(:func:`ranker.model.shared_history_attention`, :func:`ranker.model.shared_history_coaction`,
:func:`ranker.model.joined_features`), compiled; it holds the eager model's own modules (the same
parameter tensors, nothing copied) and runs their operations in the same order, so its scores equal
the eager model's (tests/unit/test_ranker_scripted.py compares them on every shape the ranker
serves). Graph optimisation is off (:func:`run`): no fusion that would change float rounding, and no
profiling runs whose results depend on the first shapes seen.
(No ``from __future__ import annotations`` here: TorchScript reads this module's annotations at run time.)
"""

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ranker.model import (
    DownstreamModel,
    PlugIn,
    joined_features,
    shared_history_attention,
    shared_history_coaction,
)


class _Over(nn.Module):
    """``OverArch`` cut at the plug-in layer: ``first`` ends at ``h_m``, ``rest`` goes on to the logit."""

    def __init__(self, model: DownstreamModel) -> None:
        super().__init__()
        m = model.cfg.plugin_layer
        layers = list(model.over.layers)
        self.first = nn.ModuleList(layers[:m])
        self.rest = nn.ModuleList(layers[m:])
        self.logit = model.over.logit

    def until(self, x: Tensor) -> Tensor:
        for layer in self.first:
            x = torch.relu(layer(x))
        return x

    def after(self, h: Tensor, addend: Tensor | None) -> Tensor:
        if addend is not None:
            h = h + addend
        for layer in self.rest:
            h = torch.relu(layer(h))
        return self.logit(h).squeeze(-1)


class _PlugIn(nn.Module):
    """:class:`ranker.model.PlugIn`'s forward over its own buffers and layers (TorchScript cannot read
    that class's postponed annotations)."""

    mean: Tensor
    scale: Tensor

    def __init__(self, plugin: nn.Module) -> None:
        super().__init__()
        if not isinstance(plugin, PlugIn):
            raise TypeError(f"the scripted serving graph knows PlugIn plug-ins, not {type(plugin).__name__}")
        self.register_buffer("mean", plugin.mean)
        self.register_buffer("scale", plugin.scale)
        self.hidden, self.out = plugin.hidden, plugin.out

    def forward(self, knowledge: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden((knowledge - self.mean) / self.scale)))


class ServingGraph(nn.Module):
    """One user's candidates: ``before`` → ``h_m``; ``after(h_m, knowledge)`` → logits. Ids as the
    ranker encodes them: ``user`` [1], ``item``/``category``/``shop`` [B], history [1, L]."""

    def __init__(self, model: DownstreamModel) -> None:
        super().__init__()
        sp, att, co = model.sparse, model.attention, model.coaction
        self.item, self.category, self.shop = sp.item, sp.category, sp.shop
        self.has_user = sp.user is not None
        # a placeholder never read when the model has no user id (TorchScript wants a module here)
        self.user = sp.user if sp.user is not None else nn.Embedding(1, 1)
        self.query_proj, self.key_proj, self.prod_proj, self.att_out = (
            att.query_proj,
            att.key_proj,
            att.prod_proj,
            att.out,
        )
        self.co_weights, self.co_inputs = co.weights, co.inputs
        self.d_in, self.h1, self.h2 = co.d_in, co.h1, co.h2
        self.over = _Over(model)
        self.plugins = nn.ModuleList([_PlugIn(p) for p in model.plugins.values()])

    @torch.jit.export
    def before(
        self,
        user: Tensor,
        item: Tensor,
        category: Tensor,
        shop: Tensor,
        hist_item: Tensor,
        hist_category: Tensor,
    ) -> Tensor:
        query = torch.cat([self.item(item), self.category(category)], dim=-1)
        keys = torch.cat([self.item(hist_item), self.category(hist_category)], dim=-1)
        mask = hist_item > 0
        attended = shared_history_attention(
            query,
            keys[0],
            mask,
            self.query_proj.weight,
            self.query_proj.bias,
            self.key_proj.weight,
            self.prod_proj.weight,
            self.att_out.weight,
            self.att_out.bias,
        )
        coaction = shared_history_coaction(
            self.co_weights(item), self.co_inputs(hist_item[0]), hist_item, self.d_in, self.h1, self.h2
        )
        user_emb: Tensor | None = None
        if self.has_user:
            user_emb = self.user(user)
        features = joined_features(query, keys, mask, attended, self.shop(shop), coaction, user_emb)
        return self.over.until(features)

    @torch.jit.export
    def after(self, h_m: Tensor, knowledge: Tensor | None) -> Tensor:
        """``knowledge=None``: the base model (no addend); a model without plug-ins ignores it."""
        addend: Tensor | None = None
        if knowledge is not None:
            for plugin in self.plugins:  # none: the model has no plug-in
                h = plugin(knowledge)
                addend = h if addend is None else addend + h
        return self.over.after(h_m, addend)


def script(model: DownstreamModel) -> torch.jit.ScriptModule:
    """The TorchScript serving graph of ``model`` (eval mode; its parameters, shared)."""
    if len(model.plugins) > 1:
        raise ValueError("the scripted serving graph takes one knowledge plug-in")
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 marks torch.jit.script deprecated (torch.export's AOT path is its successor); the
        # project pins 2.13, and docs/ranker.md says why this lever is kept and what would replace it.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        return torch.jit.script(ServingGraph(model).eval())


@contextlib.contextmanager
def run() -> Iterator[None]:
    """The block runs scripted graphs as written: no fusion, no profiling-driven rewrites."""
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        yield
