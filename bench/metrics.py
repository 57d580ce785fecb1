"""``keep bench metrics``: vectorised GAUC vs a per-user ``sklearn.metrics.roc_auc_score`` loop.

1M rows / 50k users (``--quick``: 20k rows / 1k users). The full sklearn loop takes minutes, so it is
timed on a random subset of users and extrapolated linearly in the number of users; the vectorised
GAUC is also computed on that subset and must agree with the loop's value.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def make_scores(rows: int, users: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random impressions: skewed users, ~5% clicks, scores rounded to 3 decimals (many ties)."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.0, users)
    user = rng.choice(users, size=rows, p=weight / weight.sum())
    label = (rng.random(rows) < 0.05).astype(np.int8)
    score = np.round(rng.random(rows) * 0.5 + 0.3 * label, 3)
    return user, label, score


def sklearn_gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """The obvious reference: one ``roc_auc_score`` per user with both labels."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(users, kind="stable")
    u, y, s = users[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    total, weight = 0.0, 0
    for yy, ss in zip(np.split(y, bounds), np.split(s, bounds), strict=True):
        if 0 < yy.sum() < len(yy):
            total += len(yy) * roc_auc_score(yy, ss)
            weight += len(yy)
    return total / weight


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.metrics import gauc

    quick = bool(getattr(args, "quick", False))
    rows, users, subset_users = (20_000, 1_000, 200) if quick else (1_000_000, 50_000, 2_500)
    user, label, score = make_scores(rows, users)
    n_users = len(np.unique(user))
    t0 = time.perf_counter()
    value = gauc(user, label, score)
    vec_s = time.perf_counter() - t0

    rng = np.random.default_rng(1)
    chosen = rng.choice(np.unique(user), size=min(subset_users, n_users), replace=False)
    mask = np.isin(user, chosen)
    t0 = time.perf_counter()
    ref = sklearn_gauc(user[mask], label[mask], score[mask])
    loop_s = time.perf_counter() - t0
    vec_subset = gauc(user[mask], label[mask], score[mask])
    extrapolated = loop_s * n_users / len(chosen)
    return {
        "rows": rows,
        "users": n_users,
        "gauc": round(value, 6),
        "gauc_vectorised_s": round(vec_s, 4),
        "sklearn_loop_users_timed": len(chosen),
        "sklearn_loop_rows_timed": int(mask.sum()),
        "sklearn_loop_s_measured": round(loop_s, 4),
        "sklearn_loop_s_extrapolated": round(extrapolated, 2),
        "speedup": round(extrapolated / vec_s, 1),
        "subset_gauc_sklearn": round(ref, 9),
        "subset_gauc_vectorised": round(vec_subset, 9),
        "subset_abs_diff": float(abs(ref - vec_subset)),
        "agree": bool(abs(ref - vec_subset) < 1e-9),
        "quick": quick,
    }
