"""Growing an extractor's id tables when a continuation meets new ids (issue 12 deliver 4).

The vocabularies are append-only (:meth:`contract.ids.Vocab.extended`): old ids keep their rows, new
ids get rows at the end. So growing is: keep every old row (weights and the tables' row-wise Adagrad
state) and append new rows, the weights drawn like a fresh table's (``normal(0, init_std)``, from a
generator seeded with the run's seed so every rank draws the same), the optimizer state zero: a new
row starts as a fresh row would, and the first step that reaches it updates it like any other. No id
silently stays OOV. Works on a gathered checkpoint state (:mod:`trainer.sharded`), before sharding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from contract.extractor import ExtractorConfig
from contract.ids import Vocabs
from trainer.models.tables import TABLES, table_key


def table_sizes(vocabs: Vocabs) -> dict[str, int]:
    """Rows of each table for ``vocabs`` (PAD and OOV included)."""
    return {
        "user": len(vocabs.user),
        "item": len(vocabs.item),
        "shop": vocabs.n_shops(),
        "category": len(vocabs.category),
    }


def grow_state(
    cfg: ExtractorConfig, state: dict[str, Any], vocabs: Vocabs, *, seed: int
) -> tuple[ExtractorConfig, dict[str, Any], dict[str, int]]:
    """``cfg`` and the gathered ``{"model", "optimizer"}`` state with tables sized for ``vocabs``.

    Returns (config, state, rows added per table); the same objects when nothing grew."""
    sizes = table_sizes(vocabs)
    added = {name: sizes[name] - getattr(cfg, field) for name, (field, _) in TABLES.items()}
    shrunk = [name for name, n in added.items() if n < 0]
    if shrunk:
        raise ValueError(f"vocabularies smaller than the model's tables: {shrunk}")
    if not any(added.values()):
        return cfg, state, added
    grown_cfg = dataclasses.replace(
        cfg,
        n_users=sizes["user"],
        n_items=sizes["item"],
        n_shops=sizes["shop"],
        n_categories=sizes["category"],
    )
    model = dict(state["model"])
    sparse = {key: dict(entry) for key, entry in state["optimizer"]["sparse"].items()}
    generator = torch.Generator().manual_seed(seed)
    for name, (field, _) in TABLES.items():
        n = added[name]
        if not n:
            continue
        key, old_rows = table_key(name), getattr(cfg, field)
        old = model[key]
        new_rows = torch.empty(n, old.shape[1], dtype=old.dtype).normal_(
            0.0, cfg.init_std, generator=generator
        )
        model[key] = torch.cat([old, new_rows])
        for moment, value in sparse.get(key, {}).items():
            # One value per row and column shard, shard-major: [shards * rows] -> [shards * new rows].
            per_shard = value.reshape(-1, old_rows)
            pad = torch.zeros((per_shard.shape[0], n), dtype=value.dtype)
            sparse[key][moment] = torch.cat([per_shard, pad], dim=1).reshape(-1)
    optimizer = {"dense": state["optimizer"]["dense"], "sparse": sparse}
    return grown_cfg, {"model": model, "optimizer": optimizer}, added
