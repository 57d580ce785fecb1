"""K̂ assembly: the one code path from a knowledge lookup to the plug-in's input (DESIGN §1, paper eq. 6).

Training (through GKC or from a local bundle), evaluation and serving all call :func:`assemble`, so the
model sees the same bytes offline and online. Per candidate the row is::

    [K̂_u, K̂_i, K̂_u ⊙ K̂_i, K̂_uc]      (K̂_u ⊙ K̂_i only when the bundle has the interaction block)

A block whose found-mask is false (cold user, unseen item, no (user, category) pair) is zeros.

:class:`KnowledgeSchema` is what a model depends on: block names and dims (plus the bundle format). An
artifact records it with the pinned version; :meth:`KnowledgeSchema.require` refuses a mismatch.
Numpy only (no torch, no grpc): readers are duck-typed — anything with
``batch_get(user_id, item_ids, category_ids, version) -> Lookup`` (the GKC client, the bundle reader).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gkc.bundle import Manifest, canonical_ids
from gkc.lookup import Lookup
from services.errors import Conflict

#: The knowledge kind read from GKC / bundles; other kinds (offline extractor functions) exist in training.
GKC_KIND = "gkc"


class KnowledgeMismatch(Conflict):
    """The knowledge offered does not have the schema or version the model was trained with."""


@dataclass(frozen=True)
class KnowledgeSchema:
    kind: str
    #: (block name, dim) in column order.
    blocks: tuple[tuple[str, int], ...]
    format_version: int = 1

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.blocks)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> KnowledgeSchema:
        dims = manifest.dims
        blocks: list[tuple[str, int]] = [("ku", dims.user), ("ki", dims.item)]
        if manifest.interaction:
            blocks.append(("ku*ki", dims.item))
        blocks.append(("kuc", dims.uc))
        return cls(kind=GKC_KIND, blocks=tuple(blocks), format_version=manifest.format_version)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "blocks": [[n, d] for n, d in self.blocks],
            "format_version": self.format_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnowledgeSchema:
        return cls(
            kind=str(data["kind"]),
            blocks=tuple((str(n), int(d)) for n, d in data["blocks"]),
            format_version=int(data.get("format_version", 1)),
        )

    def require(self, offered: KnowledgeSchema, *, what: str = "knowledge") -> None:
        """Raise :class:`KnowledgeMismatch` unless ``offered`` is exactly this schema."""
        if offered != self:
            raise KnowledgeMismatch(
                f"{what} schema mismatch: the model was trained with {self.describe()}, "
                f"offered {offered.describe()}"
            )

    def describe(self) -> str:
        blocks = ", ".join(f"{n}:{d}" for n, d in self.blocks)
        return f"{self.kind}[{blocks}] (format {self.format_version})"


class KnowledgeReader(Protocol):
    def batch_get(
        self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str], version: int = 0
    ) -> Lookup: ...


def assemble(lookup: Lookup, schema: KnowledgeSchema) -> np.ndarray:
    """``[n_candidates, schema.dim]`` float32 K̂ for one user's candidates; refuses wrong dims."""
    names = [n for n, _ in schema.blocks]
    dims = dict(schema.blocks)
    n = lookup.n_candidates
    got = {"ku": lookup.user.shape[-1], "ki": lookup.items.shape[-1], "kuc": lookup.ucs.shape[-1]}
    for name in ("ku", "ki", "kuc"):
        if name in dims and dims[name] != got[name]:
            raise KnowledgeMismatch(
                f"lookup of version {lookup.version} has {name} dim {got[name]}, "
                f"the model expects {dims[name]}"
            )
    user = lookup.user.astype(np.float32, copy=False) * np.float32(bool(lookup.user_found))
    items = lookup.items.astype(np.float32, copy=False) * lookup.item_found[:, None].astype(np.float32)
    ucs = lookup.ucs.astype(np.float32, copy=False) * lookup.uc_found[:, None].astype(np.float32)
    cand_items = items[lookup.item_index] if len(items) else np.zeros((n, dims.get("ki", 0)), np.float32)
    cand_ucs = ucs[lookup.uc_index] if len(ucs) else np.zeros((n, dims.get("kuc", 0)), np.float32)
    blocks = {
        "ku": np.broadcast_to(user, (n, user.shape[-1])),
        "ki": cand_items,
        "ku*ki": cand_items * user[None, :] if "ku*ki" in dims else None,
        "kuc": cand_ucs,
    }
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise KnowledgeMismatch(f"schema blocks {unknown} cannot be assembled from a GKC lookup")
    out = np.empty((n, schema.dim), dtype=np.float32)
    col = 0
    for name in names:
        block = blocks[name]
        assert block is not None
        out[:, col : col + dims[name]] = block
        col += dims[name]
    return out


def _user_groups(user_ids: np.ndarray) -> Iterable[tuple[str, np.ndarray]]:
    order = np.argsort(user_ids, kind="stable")
    sorted_ids = user_ids[order]
    if len(sorted_ids) == 0:
        return
    cuts = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    for rows in np.split(order, cuts):
        yield str(user_ids[rows[0]]), rows


def knowledge_for_rows(
    reader: KnowledgeReader,
    version: int,
    schema: KnowledgeSchema,
    user_ids: Any,
    item_ids: Any,
    category_ids: Any,
    *,
    max_batch: int = 500,
    progress: bool = False,
) -> np.ndarray:
    """K̂ for every row of a log: one ``batch_get`` per user (chunked at ``max_batch`` candidates).

    Ids are raw ids of the data contract; they travel in their canonical string spelling.
    """
    users = canonical_ids(user_ids)
    items = canonical_ids(item_ids)
    cats = canonical_ids(category_ids)
    out = np.zeros((len(users), schema.dim), dtype=np.float32)
    groups = list(_user_groups(users))
    iterator: Iterable[tuple[str, np.ndarray]] = groups
    if progress:
        from tqdm import tqdm

        iterator = tqdm(groups, desc="knowledge", unit="user", leave=False)
    for user, rows in iterator:
        for start in range(0, len(rows), max_batch):
            chunk = rows[start : start + max_batch]
            lookup = reader.batch_get(user, items[chunk].tolist(), cats[chunk].tolist(), version)
            if version and lookup.version != version:
                raise KnowledgeMismatch(f"asked for knowledge version {version}, got {lookup.version}")
            out[chunk] = assemble(lookup, schema)
    return out
