"""K̂ assembly: the one code path from a knowledge lookup to the plug-in's input (paper eq. 6).

Training (through GKC or from a local bundle), evaluation and serving all call :func:`assemble`, so the
model sees the same bytes offline and online. Per candidate the row is::

    [K̂_u, K̂_i, K̂_u ⊙ K̂_i, K̂_uc]      (the layout of :class:`contract.knowledge.KnowledgeSchema`)

A block whose found-mask is false (cold user, unseen item, no (user, category) pair) is zeros.
Numpy only (no torch, no grpc): readers are duck-typed — anything with
``batch_get(user_id, item_ids, category_ids, version) -> Lookup`` (the GKC client, the bundle reader).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from contract.ids import canonical_ids
from contract.knowledge import (
    INTERACTION_BLOCK,
    ITEM_BLOCK,
    USER_BLOCK,
    USER_CATEGORY_BLOCK,
    KnowledgeMismatch,
    KnowledgeSchema,
    KnowledgeSpec,
)
from gkc.bundle import Manifest
from gkc.lookup import Lookup


def manifest_schema(manifest: Manifest) -> KnowledgeSchema:
    """The knowledge layout of a bundle or GKC version, from its manifest."""
    return KnowledgeSchema.gkc(manifest.dims, manifest.interaction, manifest.format_version)


class KnowledgeReader(Protocol):
    def batch_get(
        self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str], version: int = 0
    ) -> Lookup: ...


def assemble(lookup: Lookup, schema: KnowledgeSchema) -> np.ndarray:
    """``[n_candidates, schema.dim]`` float32 K̂ for one user's candidates; refuses wrong dims."""
    names = [n for n, _ in schema.blocks]
    dims = dict(schema.blocks)
    n = lookup.n_candidates
    got = {
        USER_BLOCK: lookup.user.shape[-1],
        ITEM_BLOCK: lookup.items.shape[-1],
        USER_CATEGORY_BLOCK: lookup.ucs.shape[-1],
    }
    for name in got:
        if name in dims and dims[name] != got[name]:
            raise KnowledgeMismatch(
                f"lookup of version {lookup.version} has {name} dim {got[name]}, "
                f"the model expects {dims[name]}"
            )
    user = lookup.user.astype(np.float32, copy=False) * np.float32(bool(lookup.user_found))
    items = lookup.items.astype(np.float32, copy=False) * lookup.item_found[:, None].astype(np.float32)
    ucs = lookup.ucs.astype(np.float32, copy=False) * lookup.uc_found[:, None].astype(np.float32)
    no_items, no_ucs = (np.zeros((n, dims.get(b, 0)), np.float32) for b in (ITEM_BLOCK, USER_CATEGORY_BLOCK))
    cand_items = items[lookup.item_index] if len(items) else no_items
    cand_ucs = ucs[lookup.uc_index] if len(ucs) else no_ucs
    blocks = {
        USER_BLOCK: np.broadcast_to(user, (n, user.shape[-1])),
        ITEM_BLOCK: cand_items,
        INTERACTION_BLOCK: cand_items * user[None, :] if INTERACTION_BLOCK in dims else None,
        USER_CATEGORY_BLOCK: cand_ucs,
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


def found_flags(lookup: Lookup) -> np.ndarray:
    """``[n_candidates, 3]`` bool: whether each candidate's user, item and (user, category) row was found."""
    n = lookup.n_candidates
    out = np.empty((n, 3), dtype=bool)
    out[:, 0] = bool(lookup.user_found)
    out[:, 1] = lookup.item_found[lookup.item_index] if n else False
    out[:, 2] = lookup.uc_found[lookup.uc_index] if n else False
    return out


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
    pin: KnowledgeSpec | None = None,
    found: np.ndarray | None = None,
) -> np.ndarray:
    """K̂ for every row of a log: one ``batch_get`` per user (chunked at ``max_batch`` candidates).

    Ids are raw ids of the data contract; they travel in their canonical string spelling. Every answer
    must be ``version`` (when not 0) and, with ``pin``, the identity it pins (else
    :class:`KnowledgeMismatch`). ``found``, an ``[n_rows, 3]`` bool array, receives :func:`found_flags`.
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
            if pin is not None:
                problem = pin.identity_problem(lookup.version, lookup.publish_id, lookup.checksum)
                if problem:
                    raise KnowledgeMismatch(problem)
            out[chunk] = assemble(lookup, schema)
            if found is not None:
                found[chunk] = found_flags(lookup)
    return out
