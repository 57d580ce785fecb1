"""Pre-training losses against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.losses import hybrid_loss, pair_indices, pairwise_loss, pointwise_loss


def brute_pairs(keys: np.ndarray, labels: np.ndarray) -> set[tuple[int, int]]:
    n = len(keys)
    return {
        (i, j) for i in range(n) for j in range(n) if keys[i] == keys[j] and labels[i] == 1 and labels[j] == 0
    }


@pytest.mark.parametrize("seed", range(5))
def test_pair_indices_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 7, 60)
    labels = (rng.random(60) < 0.3).astype(np.int8)
    i, j = pair_indices(keys, labels)
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(got) == len(i)  # no duplicates
    assert got == brute_pairs(keys, labels)


def test_pair_indices_without_both_labels_is_empty() -> None:
    i, j = pair_indices(np.array([1, 1, 2]), np.array([0, 0, 0]))
    assert len(i) == 0 and len(j) == 0


def test_pairwise_term_equals_hand_computation() -> None:
    # keys: rows 0-2 share a session, row 3 is alone; labels 1, 0, 0, 1.
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    labels = np.array([1, 0, 0, 1])
    keys = np.array([7, 7, 7, 9])
    i, j = pair_indices(keys, labels)
    pairs = (torch.from_numpy(i), torch.from_numpy(j))
    # Only (0, 1) and (0, 2) are pairs: row 3 has no partner with a different label in its session.
    hand = (math.log(1 + math.exp(-(2.0 - -1.0))) + math.log(1 + math.exp(-(2.0 - 0.5)))) / 2
    assert pairwise_loss(logits, *pairs).item() == pytest.approx(hand, rel=1e-6)

    y = torch.tensor(labels, dtype=torch.float32)
    sig = [1 / (1 + math.exp(-s)) for s in logits.tolist()]
    bce = (
        -sum(
            yy * math.log(p) + (1 - yy) * math.log(1 - p) for yy, p in zip(labels.tolist(), sig, strict=True)
        )
        / 4
    )
    assert pointwise_loss(logits, y).item() == pytest.approx(bce, rel=1e-6)
    assert hybrid_loss(logits, y, pairs, 0.25).item() == pytest.approx(bce + 0.25 * hand, rel=1e-6)


def test_pairwise_loss_without_pairs_is_zero_and_keeps_gradient_graph() -> None:
    logits = torch.zeros(3, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = hybrid_loss(logits, torch.tensor([0.0, 1.0, 0.0]), (empty, empty), 0.25)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    assert logits.grad is not None
