"""Training order: days ascending, shuffled within a day, seeded (the paper's one-pass online regime)."""

from __future__ import annotations

import numpy as np

from contract.schema import day_of


def day_order(ts: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of row indices: by day ascending, uniformly shuffled inside each day."""
    days = day_of(ts)
    noise = np.random.default_rng(seed).random(len(days))
    return np.lexsort((noise, days))


def day_slices(ts_sorted_by_day: np.ndarray) -> list[tuple[int, int, int]]:
    """``(day, start, stop)`` runs of an array already ordered by day."""
    days = day_of(ts_sorted_by_day)
    if len(days) == 0:
        return []
    cuts = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate(([0], cuts))
    stops = np.concatenate((cuts, [len(days)]))
    return [(int(days[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]
