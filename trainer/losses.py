"""Pre-training losses (paper §4.2.2): pointwise cross-entropy plus α x pairwise logistic loss.

``L = L_point + α·L_pair``; ``L_pair = mean log(1 + exp(-(s_i - s_j)))`` over pairs (i, j) of rows with
the same pair key (session, else user x day) where row i has label 1 and row j label 0. Both terms are
means (over rows and over pairs) rather than the paper's sums, so α keeps its meaning whatever the batch
size and however many pairs a batch happens to hold. A batch with no pair contributes no pairwise term.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pair_indices(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (positive i, negative j) position pairs that share a key, vectorised (no per-row loop).

    Negatives are sorted by key; each positive's partners are then one contiguous run, found with two
    ``searchsorted`` calls and expanded with ``repeat`` + ``arange``.
    """
    keys = np.asarray(keys)
    labels = np.asarray(labels)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    neg = neg[np.argsort(keys[neg], kind="stable")]
    neg_keys = keys[neg]
    lo = np.searchsorted(neg_keys, keys[pos], side="left")
    hi = np.searchsorted(neg_keys, keys[pos], side="right")
    counts = hi - lo
    total = int(counts.sum())
    i = np.repeat(pos, counts)
    run_start = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    j = neg[run_start + np.arange(total)]
    return i.astype(np.int64), j.astype(np.int64)


def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits (Equation 1, averaged)."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def pairwise_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Mean ``log(1 + exp(-(s_i - s_j)))`` over the given pairs (Equation 2, averaged); 0 if none."""
    if i.numel() == 0:
        return logits.new_zeros(())
    # index_select: deterministic gradients (advanced indexing accumulates with atomics on CPU).
    return F.softplus(logits.index_select(0, j) - logits.index_select(0, i)).mean()


def hybrid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor] | None,
    alpha: float,
) -> torch.Tensor:
    """Equation 3: pointwise + α x pairwise."""
    loss = pointwise_loss(logits, labels)
    if pairs is not None and alpha:
        loss = loss + alpha * pairwise_loss(logits, *pairs)
    return loss
