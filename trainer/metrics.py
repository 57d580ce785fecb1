"""Ranking metrics: AUC with ties, and the paper's GAUC (paper eq. 7), vectorised.

``GAUC = Σ_u n_u·AUC_u / Σ_u n_u`` over the users whose rows have both labels, ``n_u`` the user's
impressions. Users with one class have no AUC and are left out of both sums (torch-rechub's gauc
returns NaN for them instead).

Everything is the Mann-Whitney form of AUC with mid-ranks for tied scores, computed for all users at
once: one ``lexsort`` by (user, score), tie runs found with ``diff``, per-user sums with ``bincount``.
A per-user ``sklearn.metrics.roc_auc_score`` loop gives the same numbers ~hundreds of times slower
(``keep bench metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _as_binary(labels: Any) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(np.int64)


def _as_scores(scores: Any, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def _group_codes(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes 0..G-1 for ``groups`` (any hashable dtype numpy can sort) and the unique values."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"users must have shape ({n},), got {g.shape}")
    uniques, codes = np.unique(g, return_inverse=True)
    return codes.astype(np.int64), uniques


@dataclass(frozen=True)
class PerUserAuc:
    """Per-group AUC pieces: ``auc`` is NaN where a group lacks one of the labels."""

    auc: np.ndarray
    n_rows: np.ndarray
    n_pos: np.ndarray
    uniques: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return (self.n_pos > 0) & (self.n_pos < self.n_rows)


def per_user_auc(users: Any, labels: Any, scores: Any) -> PerUserAuc:
    """AUC of every user at once (mid-ranks for ties); NaN for users with only one label."""
    y = _as_binary(labels)
    s = _as_scores(scores, len(y))
    codes, uniques = _group_codes(users, len(y))
    n_groups = len(uniques)
    order = np.lexsort((s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    n = len(c)
    n_rows = np.bincount(codes, minlength=n_groups)
    n_pos = np.bincount(codes, weights=y, minlength=n_groups).astype(np.int64)
    if n == 0:
        return PerUserAuc(np.full(0, np.nan), n_rows, n_pos, uniques)
    group_start = np.concatenate(([0], np.cumsum(n_rows)[:-1]))
    # Tie runs: a new run starts where the user or the score changes.
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = (c[1:] != c[:-1]) | (ss[1:] != ss[:-1])
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_last = np.concatenate((run_first[1:], [n])) - 1
    # 1-based rank inside the user's block; a tie run gets the mean of its first and last rank.
    mid_rank = (run_first + run_last) / 2.0 - group_start[c[run_first]] + 1.0
    rank = mid_rank[run_id]
    rank_sum_pos = np.bincount(c, weights=rank * yy, minlength=n_groups)
    n_neg = n_rows - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return PerUserAuc(auc=auc, n_rows=n_rows, n_pos=n_pos, uniques=uniques)


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC (Mann-Whitney with mid-ranks); NaN when only one label is present."""
    y = _as_binary(labels)
    result = per_user_auc(np.zeros(len(y), dtype=np.int64), y, scores)
    return float(result.auc[0]) if len(result.auc) else float("nan")


def gauc(users: Any, labels: Any, scores: Any) -> float:
    """Impression-weighted mean of per-user AUC over users with both labels (paper eq. 7); NaN if none."""
    per = per_user_auc(users, labels, scores)
    ok = per.valid
    weight = per.n_rows[ok].sum()
    if weight == 0:
        return float("nan")
    return float((per.n_rows[ok] * per.auc[ok]).sum() / weight)


def gauc_by_group(users: Any, labels: Any, scores: Any, group_of_user: Mapping[Any, str]) -> dict[str, float]:
    """GAUC inside each user group (e.g. super-domain click-count buckets, paper Table 7).

    ``group_of_user`` maps a user id to its group name; users missing from it are left out. A group
    with no user having both labels gets NaN.
    """
    per = per_user_auc(users, labels, scores)
    names = np.array([group_of_user.get(u, "") for u in per.uniques.tolist()], dtype=object)
    out: dict[str, float] = {}
    for name in sorted(set(group_of_user.values())):
        sel = (names == name) & per.valid
        weight = per.n_rows[sel].sum()
        out[name] = float((per.n_rows[sel] * per.auc[sel]).sum() / weight) if weight else float("nan")
    return out


@dataclass(frozen=True)
class GaucResult:
    """What ``keep evaluate`` reports: GAUC, AUC, rows, users with both labels, and all users."""

    gauc: float
    auc: float
    rows: int
    users: int
    users_all: int
    rows_in_gauc: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_scores(users: Any, labels: Any, scores: Any) -> GaucResult:
    per = per_user_auc(users, labels, scores)
    ok = per.valid
    weight = int(per.n_rows[ok].sum())
    value = float((per.n_rows[ok] * per.auc[ok]).sum() / weight) if weight else float("nan")
    return GaucResult(
        gauc=value,
        auc=auc(labels, scores),
        rows=int(per.n_rows.sum()),
        users=int(ok.sum()),
        users_all=len(per.uniques),
        rows_in_gauc=weight,
    )
