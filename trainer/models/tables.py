"""The extractor's id tables as TorchRec modules (issue 12 deliver 3).

- ``user`` (48-d) in an :class:`~torchrec.EmbeddingBagCollection`: one id per row, sum-pooled.
- ``item``, ``shop`` and ``category`` (16-d) in one :class:`~torchrec.EmbeddingCollection`: the
  candidate's ids (one per row) and the behaviour sequence (``hist_item``/``hist_category``, jagged:
  a row's real clicks only) read the same ``item`` and ``category`` tables.

Two modules, not one, because an ``EmbeddingCollection`` needs one embedding width for all its tables.
One forward is one lookup of each module (under :class:`~torchrec.distributed.DistributedModelParallel`
one input all-to-all each), so the extractor looks every id of a batch up once (:class:`Embedded`).

PAD (row 0 of ``item``, ``shop``, ``category``) reads as zeros and gets no gradient, like
``nn.Embedding(padding_idx=0)``: its output is multiplied by ``id != PAD``.

Initialisation is world-independent: each table is ``normal(0, init_std)`` drawn in fixed row blocks
from a generator seeded by the model's ``init_seed`` (one draw of the global RNG at build time) and the
table, so a process that holds only some rows or columns of a table (a shard) fills them with exactly
the numbers a single process would (:func:`fill_initial`).

Checkpoints keep the layout of the dense extractor: ``embeddings.{user,item,shop,category}.weight``
(:func:`to_canonical` / :func:`from_canonical`), so export and older checkpoints read the same keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)

from contract.extractor import ExtractorConfig
from contract.ids import PAD

#: Table name → (config field of its rows, padded?).
TABLES = {
    "user": ("n_users", False),
    "item": ("n_items", True),
    "shop": ("n_shops", True),
    "category": ("n_categories", True),
}
#: Canonical (checkpoint) key → key inside :class:`EmbeddingArch`.
CANONICAL = {
    "embeddings.user.weight": "embeddings.user_bags.embedding_bags.user.weight",
    "embeddings.item.weight": "embeddings.ids.embeddings.item.weight",
    "embeddings.shop.weight": "embeddings.ids.embeddings.shop.weight",
    "embeddings.category.weight": "embeddings.ids.embeddings.category.weight",
}
_INTERNAL = {v: k for k, v in CANONICAL.items()}
#: Rows drawn per block by :func:`table_blocks` (fixed: the numbers must not depend on the shard).
INIT_BLOCK = 1 << 16
ID_FEATURES = ("item", "shop", "category", "hist_item", "hist_category")


def table_key(name: str) -> str:
    return f"embeddings.{name}.weight"


def to_canonical(state: dict[str, Any]) -> dict[str, Any]:
    return {_INTERNAL.get(k, k): v for k, v in state.items()}


def from_canonical(state: dict[str, Any]) -> dict[str, Any]:
    return {CANONICAL.get(k, k): v for k, v in state.items()}


def table_blocks(cfg: ExtractorConfig, init_seed: int, name: str) -> Iterator[tuple[int, torch.Tensor]]:
    """Table ``name``'s initial weights as ``(first row, [rows, dim])`` blocks of :data:`INIT_BLOCK`
    rows, drawn in order from one generator (a shard copies the parts it holds, one block in memory)."""
    field, padded = TABLES[name]
    rows, dim = getattr(cfg, field), cfg.user_dim if name == "user" else cfg.id_dim
    generator = torch.Generator().manual_seed(init_seed + list(TABLES).index(name))
    for lo in range(0, rows, INIT_BLOCK):
        values = torch.empty((min(INIT_BLOCK, rows - lo), dim)).normal_(
            0.0, cfg.init_std, generator=generator
        )
        if padded and lo == 0:
            values[PAD].zero_()
        yield lo, values


def fill_initial(
    cfg: ExtractorConfig, init_seed: int, name: str, target: torch.Tensor, row: int, col: int
) -> None:
    """Fill ``target`` (rows ``row:``, columns ``col:`` of table ``name``) with its initial weights."""
    stop = row + target.shape[0]
    for lo, values in table_blocks(cfg, init_seed, name):
        hi = lo + len(values)
        if hi <= row or lo >= stop:
            continue
        a, b = max(row, lo), min(stop, hi)
        target[a - row : b - row].copy_(values[a - lo : b - lo, col : col + target.shape[1]])


@dataclass
class Embedded:
    """Every embedding of a batch, looked up once: per row ``user [B, 48]``, ``item``, ``shop``,
    ``category [B, 16]``; the packed behaviour sequence ``row [N]``, ``h_item``, ``h_cat [N, 16]``."""

    n: int
    user: torch.Tensor
    item: torch.Tensor
    shop: torch.Tensor
    category: torch.Tensor
    row: torch.Tensor
    h_item: torch.Tensor
    h_cat: torch.Tensor

    def item_side(self) -> torch.Tensor:
        """``[item, shop, category]`` embeddings, [B, 48]: the item-level knowledge K_i."""
        return torch.cat((self.item, self.shop, self.category), dim=-1)

    def candidate(self) -> torch.Tensor:
        """``[item, category]``, the query matched against the behaviour sequence."""
        return torch.cat((self.item, self.category), dim=-1)

    def behaviours(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.row, self.h_item, self.h_cat


def _not_pad(ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values * (ids != PAD).unsqueeze(-1).to(values.dtype)


class EmbeddingArch(nn.Module):
    """The shared embedding layer: user id 48-d; item, shop and category 16-d (see the module doc).

    ``materialize=False`` leaves the tables on the ``meta`` device: sharding then allocates each rank's
    shard only and fills it with :func:`fill_initial` (no rank ever holds a whole table it does not own).
    """

    def __init__(self, cfg: ExtractorConfig, *, materialize: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.init_seed = int(torch.randint(0, 2**40, ()).item())
        meta = torch.device("meta")
        self.user_bags = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="user",
                    embedding_dim=cfg.user_dim,
                    num_embeddings=cfg.n_users,
                    feature_names=["user"],
                )
            ],
            device=meta,
        )
        self.ids = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name="item",
                    embedding_dim=cfg.id_dim,
                    num_embeddings=cfg.n_items,
                    feature_names=["item", "hist_item"],
                ),
                EmbeddingConfig(
                    name="shop", embedding_dim=cfg.id_dim, num_embeddings=cfg.n_shops, feature_names=["shop"]
                ),
                EmbeddingConfig(
                    name="category",
                    embedding_dim=cfg.id_dim,
                    num_embeddings=cfg.n_categories,
                    feature_names=["category", "hist_category"],
                ),
            ],
            device=meta,
        )
        if materialize:
            self.user_bags.to_empty(device="cpu")
            self.ids.to_empty(device="cpu")
            with torch.no_grad():
                for name in TABLES:
                    fill_initial(cfg, self.init_seed, name, self.table(name), 0, 0)
        self.user_dim = cfg.user_dim
        self.item_side_dim = 3 * cfg.id_dim
        self.behaviour_dim = 2 * cfg.id_dim

    def table(self, name: str) -> torch.Tensor:
        """The whole weight of table ``name`` (an unsharded module only: export, evaluation)."""
        module = self.user_bags.embedding_bags[name] if name == "user" else self.ids.embeddings[name]
        weight = module.weight
        if not isinstance(weight, torch.Tensor) or weight.is_meta:
            raise RuntimeError(f"table {name!r} is sharded or not materialised; gather it first")
        return weight

    def set_table(self, name: str, weight: torch.Tensor, window: bool = False) -> None:
        """Make ``weight`` (``[rows, dim]`` of table ``name``, used as it is, not copied: a memory-mapped
        checkpoint piece stays on disk) the table of an inference module. ``window``: ``weight`` is a
        contiguous range of the table's rows (fewer rows allowed); the caller then looks rows up by their
        place in that range."""
        module = self.user_bags.embedding_bags[name] if name == "user" else self.ids.embeddings[name]
        want = tuple(module.weight.shape)
        fits = weight.shape[1:] == want[1:] and weight.shape[0] <= want[0] if window else weight.shape == want
        if not fits:
            raise ValueError(f"table {name!r}: {tuple(weight.shape)} does not fit {want}")
        module.weight = nn.Parameter(weight, requires_grad=False)

    def lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of table ``name`` of an unsharded module (PAD reads as zeros)."""
        values = torch.nn.functional.embedding(ids, self.table(name))
        return values if name == "user" else _not_pad(ids, values)

    def forward(self, b: Any) -> Embedded:
        row, h_item, h_cat = b.packed_history()
        n = len(b)
        ones = torch.ones(n, dtype=torch.long)
        counts = torch.bincount(row, minlength=n)
        user = self.user_bags(
            KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=b.user, lengths=ones)
        )["user"]
        ids = self.ids(
            KeyedJaggedTensor.from_lengths_sync(
                keys=list(ID_FEATURES),
                values=torch.cat((b.item, b.shop, b.category, h_item, h_cat)),
                lengths=torch.cat((ones, ones, ones, counts, counts)),
            )
        )
        out = [user] + [ids[f].values() for f in ID_FEATURES]
        return Embedded(
            n=n,
            user=out[0],
            item=_not_pad(b.item, out[1]),
            shop=_not_pad(b.shop, out[2]),
            category=_not_pad(b.category, out[3]),
            row=row,
            h_item=out[4],
            h_cat=_not_pad(h_cat, out[5]),
        )
