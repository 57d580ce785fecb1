"""Growing an extractor's id tables when a continuation meets new ids (issue 12 deliver 4).

The vocabularies are append-only (:meth:`contract.ids.Vocab.extended`): old ids keep their rows, new
ids get rows at the end. So growing is: keep every old row (weights and Adam moments) and append new
rows, the weights drawn like a fresh table's (``normal(0, init_std)``, from a generator seeded with
the run's seed so every rank draws the same), the Adam moments zero: a new row starts as a fresh
row would, and the first step that reaches it updates it like any other. No id silently stays OOV.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from contract.ids import Vocabs
from trainer.models.extractor import Extractor, build_extractor

#: Table name → (config field, state-dict key of its weight).
TABLES = {
    "user": ("n_users", "embeddings.user.weight"),
    "item": ("n_items", "embeddings.item.weight"),
    "shop": ("n_shops", "embeddings.shop.weight"),
    "category": ("n_categories", "embeddings.category.weight"),
}


def table_sizes(vocabs: Vocabs) -> dict[str, int]:
    """Rows of each table for ``vocabs`` (PAD and OOV included)."""
    return {
        "user": len(vocabs.user),
        "item": len(vocabs.item),
        "shop": vocabs.n_shops(),
        "category": len(vocabs.category),
    }


def grow_extractor(
    model: Extractor, optimizer_state: dict[str, Any], vocabs: Vocabs, *, seed: int
) -> tuple[Extractor, dict[str, Any], dict[str, int]]:
    """``model`` with tables sized for ``vocabs`` and the matching optimizer state dict.

    Returns (model, optimizer state, rows added per table); the same objects when nothing grew."""
    sizes = table_sizes(vocabs)
    old_cfg = model.cfg
    added = {name: sizes[name] - getattr(old_cfg, field) for name, (field, _) in TABLES.items()}
    shrunk = [name for name, n in added.items() if n < 0]
    if shrunk:
        raise ValueError(f"vocabularies smaller than the model's tables: {shrunk}")
    if not any(added.values()):
        return model, optimizer_state, added
    cfg = dataclasses.replace(
        old_cfg,
        n_users=sizes["user"],
        n_items=sizes["item"],
        n_shops=sizes["shop"],
        n_categories=sizes["category"],
    )
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, (_, key) in TABLES.items():
        if added[name]:
            old = state[key]
            new_rows = torch.empty(added[name], old.shape[1], dtype=old.dtype)
            new_rows.normal_(0.0, cfg.init_std, generator=generator)
            state[key] = torch.cat([old, new_rows])
    grown = build_extractor(cfg)
    grown.load_state_dict(state)
    return grown, _grown_optimizer_state(grown, optimizer_state), added


def _grown_optimizer_state(model: Extractor, optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """Adam moments padded with zero rows where a parameter grew (state keyed by parameter order)."""
    params = list(model.parameters())
    out = {"param_groups": optimizer_state["param_groups"], "state": {}}
    for index, entry in optimizer_state["state"].items():
        param = params[int(index)]
        grown_entry = dict(entry)
        for moment in ("exp_avg", "exp_avg_sq"):
            value = entry.get(moment)
            if value is not None and value.shape != param.shape:
                pad = torch.zeros((param.shape[0] - value.shape[0], *value.shape[1:]), dtype=value.dtype)
                grown_entry[moment] = torch.cat([value, pad])
        out["state"][index] = grown_entry
    return out
