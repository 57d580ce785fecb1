"""The downstream model: shapes and the serving broadcast."""

from __future__ import annotations

import numpy as np
import torch

from contract.downstream import DownstreamConfig
from ranker.model import Batch, DownstreamModel


def _batch(rng: np.random.Generator, n: int, cfg: DownstreamConfig, length: int = 7) -> Batch:
    hist = rng.integers(0, cfg.n_items, size=(n, length))
    hist[:, : length // 2] = 0  # left padding
    hist[0] = 0  # one user with no history at all
    return Batch(
        user=torch.from_numpy(rng.integers(2, cfg.n_users, n)),
        item=torch.from_numpy(rng.integers(2, cfg.n_items, n)),
        category=torch.from_numpy(rng.integers(2, cfg.n_categories, n)),
        shop=torch.from_numpy(rng.integers(0, cfg.n_shops, n)),
        hist_item=torch.from_numpy(hist),
        hist_category=torch.from_numpy(np.where(hist > 0, rng.integers(2, cfg.n_categories, hist.shape), 0)),
    )


def test_forward_is_finite_with_empty_history() -> None:
    cfg = DownstreamConfig(n_users=20, n_items=30, n_categories=6, n_shops=5, use_user_id=True)
    model = DownstreamModel(cfg)
    logits = model(_batch(np.random.default_rng(0), 16, cfg))
    assert logits.shape == (16,)
    assert torch.isfinite(logits).all()


def test_serving_broadcast_equals_per_candidate_copies() -> None:
    """One user's history with leading dim 1 scores N candidates like N copied rows do."""
    cfg = DownstreamConfig(n_users=20, n_items=30, n_categories=6, n_shops=5, use_user_id=True)
    model = DownstreamModel(cfg).eval()
    rng = np.random.default_rng(1)
    b = _batch(rng, 9, cfg)
    one = Batch(
        user=b.user[3:4],
        item=b.item,
        category=b.category,
        shop=b.shop,
        hist_item=b.hist_item[3:4],
        hist_category=b.hist_category[3:4],
    )
    copied = Batch(
        user=b.user[3:4].expand(9),
        item=b.item,
        category=b.category,
        shop=b.shop,
        hist_item=b.hist_item[3:4].expand(9, -1),
        hist_category=b.hist_category[3:4].expand(9, -1),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(one), model(copied))


def test_history_changes_the_score() -> None:
    cfg = DownstreamConfig(n_users=20, n_items=30, n_categories=6)
    model = DownstreamModel(cfg).eval()
    b = _batch(np.random.default_rng(2), 8, cfg)
    empty = Batch(**{**b.__dict__, "hist_item": torch.zeros_like(b.hist_item)})
    with torch.no_grad():
        assert not torch.allclose(model(b)[1:], model(empty)[1:])
