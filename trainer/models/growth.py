"""Growing an extractor's id tables when a continuation meets new ids (issue 12 deliver 4).

The vocabularies are append-only (:meth:`contract.ids.Vocab.extended`): old ids keep their rows, new
ids get rows at the end. So growing is: keep every old row (weights and the tables' row-wise Adagrad
state) and append new rows, the weights drawn like a fresh table's (``normal(0, init_std)``, from a
generator seeded with the run's seed so every rank draws the same), the optimizer state zero: a new
row starts as a fresh row would, and the first step that reaches it updates it like any other. No id
silently stays OOV. Works on a checkpoint state before sharding, without making any table whole: a
grown table is a :class:`GrownTable`, read by region (each rank copies out its own shards), over the
previous checkpoint's tables (whole tensors or per-rank pieces, :mod:`trainer.shard_files`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contract.extractor import ExtractorConfig
from contract.ids import Vocabs
from trainer.models.tables import TABLES, table_key
from trainer.shard_files import read_region, release


def table_sizes(vocabs: Vocabs) -> dict[str, int]:
    """Rows of each table for ``vocabs`` (PAD and OOV included)."""
    return {
        "user": len(vocabs.user),
        "item": len(vocabs.item),
        "shop": vocabs.n_shops(),
        "category": len(vocabs.category),
    }


@dataclass(frozen=True)
class GrownTable:
    """``base`` grown from ``old_rows`` to ``new_rows`` rows, read by region.

    Weights (``added`` given, ``[new_rows - old_rows, dim]``): rows below ``old_rows`` are the base's,
    the rest ``added``. A row-wise optimizer state (``added`` None): one value per row and column shard,
    shard-major ``[shards * rows]``; each shard's old rows are the base's, its new rows zeros."""

    base: Any
    old_rows: int
    new_rows: int
    added: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        if self.added is not None:
            return torch.Size((self.new_rows, int(self.base.shape[1])))
        return torch.Size((int(self.base.shape[0]) // self.old_rows * self.new_rows,))

    def region(self, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        if self.added is not None:
            (r0, c0), (nr, nc) = offsets, sizes
            out = torch.empty((nr, nc), dtype=self.added.dtype)
            split = min(max(self.old_rows, r0), r0 + nr)  # first row of the region that is new
            if split > r0:
                out[: split - r0] = read_region(self.base, (r0, c0), (split - r0, nc))
            if r0 + nr > split:
                lo, hi = split - self.old_rows, r0 + nr - self.old_rows
                out[split - r0 :] = self.added[lo:hi, c0 : c0 + nc]
            return out
        (g0,), (n,) = offsets, sizes
        out = torch.zeros(n, dtype=torch.float32)
        for shard in range(g0 // self.new_rows, (g0 + n - 1) // self.new_rows + 1 if n else 0):
            lo = max(g0, shard * self.new_rows) - shard * self.new_rows  # rows of this shard in the region
            hi = min(g0 + n, (shard + 1) * self.new_rows) - shard * self.new_rows
            old_hi = min(hi, self.old_rows)
            if old_hi > lo:
                at, first = shard * self.new_rows + lo - g0, shard * self.old_rows + lo
                out[at : at + old_hi - lo] = read_region(self.base, (first,), (old_hi - lo,))
        return out

    def whole(self) -> torch.Tensor:
        return self.region([0] * len(self.shape), list(self.shape))

    def release(self) -> None:
        release(self.base)


def grow_state(
    cfg: ExtractorConfig, state: dict[str, Any], vocabs: Vocabs, *, seed: int
) -> tuple[ExtractorConfig, dict[str, Any], dict[str, int]]:
    """``cfg`` and the checkpoint's ``{"model", "optimizer"}`` state with tables sized for ``vocabs``
    (grown tables are :class:`GrownTable`, read by region when sharding).

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
        new_rows = torch.empty(n, int(old.shape[1]), dtype=torch.float32).normal_(
            0.0, cfg.init_std, generator=generator
        )
        model[key] = GrownTable(old, old_rows, old_rows + n, new_rows)
        for moment, value in sparse.get(key, {}).items():
            # One value per row and column shard, shard-major: [shards * rows] -> [shards * new rows].
            sparse[key][moment] = GrownTable(value, old_rows, old_rows + n)
    optimizer = {"dense": state["optimizer"]["dense"], "sparse": sparse}
    return grown_cfg, {"model": model, "optimizer": optimizer}, added
