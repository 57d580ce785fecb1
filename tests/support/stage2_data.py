"""A random knowledge bundle covering a log's users (a few left cold), items and user-categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gkc import bundle as bundle_mod


def random_bundle(log: pd.DataFrame, out: Path, dim: int, seed: int, cold_users: int = 5) -> Path:
    """K̂_u, K̂_i of ``dim`` and K̂_uc of 4; the last ``cold_users`` users of ``log`` get no K̂_u."""
    rng = np.random.default_rng(seed)
    users = log["user_id"].unique()[:-cold_users]
    items = log["item_id"].unique()
    pairs = log[["user_id", "category_id"]].drop_duplicates()
    b = bundle_mod.build(
        user_ids=users,
        user_vectors=rng.normal(size=(len(users), dim)),
        item_ids=items,
        item_vectors=rng.normal(size=(len(items), dim)),
        uc_user_ids=pairs["user_id"].to_numpy(),
        uc_category_ids=pairs["category_id"].to_numpy(),
        uc_vectors=rng.normal(size=(len(pairs), 4)),
    )
    return bundle_mod.save(b, out)
