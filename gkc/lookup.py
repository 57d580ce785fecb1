"""The answer to one knowledge lookup, as every reader sees it (GKC client, local bundle, servicer).

A request is one user and N candidates (item, category). Repeated items or categories travel once:
``items``/``ucs`` hold the unique rows, ``item_index``/``uc_index`` map each candidate to its row.
Found-masks tell a cold-start user or item from a genuine zero vector; missing rows are zeros.
K̂_u ⊙ K̂_i is not carried: whoever needs it derives it (``ranker.knowledge`` assembles K̂).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lookup:
    version: int
    user: np.ndarray  # [d_user] float32
    user_found: bool
    items: np.ndarray  # [n_unique_items, d_item] float32
    item_found: np.ndarray  # [n_unique_items] bool
    item_index: np.ndarray  # [n_candidates] int32 into items
    ucs: np.ndarray  # [n_unique_categories, d_uc] float32, K̂_uc for this user
    uc_found: np.ndarray  # [n_unique_categories] bool
    uc_index: np.ndarray  # [n_candidates] int32 into ucs
    #: The answering version's identity beside ``version`` (gkc.store.VersionIdentity): its publish id
    #: ('' for a local bundle) and content checksum (a consumer pinned to one compares it).
    publish_id: str = ""
    checksum: str = ""

    @property
    def n_candidates(self) -> int:
        return len(self.item_index)


def dedupe(ids: Sequence[str] | np.ndarray) -> tuple[list[str], np.ndarray]:
    """Unique ids in first-seen order and, per input position, its index among them."""
    first: dict[str, int] = {}
    setdefault = first.setdefault
    # len(first) is evaluated before the insert, so a new key gets the next index (4x faster than
    # writing into a numpy array element by element).
    index = np.array([setdefault(key, len(first)) for key in ids], dtype=np.int32)
    return list(first), index
