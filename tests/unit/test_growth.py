"""trainer.models.growth.GrownTable: a table grown by rows, read by region, equals the table grown whole
(old rows kept, new rows appended; a row-wise optimizer state padded with zeros per column shard)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.models.growth import GrownTable
from trainer.shard_files import Piece, PiecedTable

OLD, NEW, DIM, SHARDS = 7, 11, 6, 2


def _pieced(whole: torch.Tensor, cols: int) -> PiecedTable:
    """``whole`` as column pieces of ``cols`` columns (1-D: one piece per shard of ``OLD`` values)."""
    values = whole.numpy()
    if whole.dim() == 1:
        pieces = [Piece((s * OLD,), values[s * OLD : (s + 1) * OLD]) for s in range(SHARDS)]
    else:
        pieces = [Piece((0, c), values[:, c : c + cols]) for c in range(0, DIM, cols)]
    return PiecedTable(tuple(whole.shape), tuple(pieces), values.dtype)


@pytest.mark.parametrize("pieced", [False, True])
def test_a_grown_table_read_by_region_equals_the_table_grown_whole(pieced: bool) -> None:
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(OLD, DIM, generator=g)
    added = torch.randn(NEW - OLD, DIM, generator=g)
    state = torch.rand(SHARDS * OLD, generator=g)
    grown_w = GrownTable(_pieced(weights, 3) if pieced else weights, OLD, NEW, added)
    grown_s = GrownTable(_pieced(state, 3) if pieced else state, OLD, NEW)
    whole_w = torch.cat([weights, added])
    whole_s = torch.cat([state.reshape(SHARDS, OLD), torch.zeros(SHARDS, NEW - OLD)], dim=1).reshape(-1)
    assert grown_w.shape == whole_w.shape and grown_s.shape == whole_s.shape
    assert torch.equal(grown_w.whole(), whole_w) and torch.equal(grown_s.whole(), whole_s)
    rng = np.random.default_rng(1)
    for _ in range(50):  # every kind of region: old rows only, new only, across the border, columns
        r0 = int(rng.integers(0, NEW))
        nr = int(rng.integers(1, NEW - r0 + 1))
        c0 = int(rng.integers(0, DIM))
        nc = int(rng.integers(1, DIM - c0 + 1))
        assert torch.equal(grown_w.region([r0, c0], [nr, nc]), whole_w[r0 : r0 + nr, c0 : c0 + nc])
        g0 = int(rng.integers(0, SHARDS * NEW))
        n = int(rng.integers(1, SHARDS * NEW - g0 + 1))
        assert torch.equal(grown_s.region([g0], [n]), whole_s[g0 : g0 + n])
