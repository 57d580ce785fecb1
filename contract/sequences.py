"""The one windowing rule for behaviour sequences, shared by offline training and the online ranker.

A row's (offline) or a request's (online) behaviour sequence is its user's last ``max_len`` clicks
*strictly before* the row's ``ts`` / the request time, oldest first, clicks ordered by ``(ts, arrival)``
(offline: file order; online: the order the store recorded them). Strictly before: a click in the
same second as the row, including the row's own click, is never part of its features (no label leak).

``trainer.data.sequences.HistoryIndex`` (all rows of a log at once, vectorised) and the ranker's
sequence store (one user's stored clicks per request) both call :func:`window_end` and
:func:`window_start`, so the two cannot drift apart. Numpy only: every package may import this.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def window_end(sorted_click_keys: Any, row_keys: Any) -> np.ndarray:
    """One past the last click strictly before each row: ``sorted_click_keys`` ascending (``ts``, or a
    composite ``(user, ts)`` key), ``row_keys`` the rows' keys of the same kind."""
    return np.searchsorted(np.asarray(sorted_click_keys), np.asarray(row_keys), side="left")


def window_start(end: Any, first: Any, max_len: int) -> np.ndarray:
    """Where each row's window begins: ``max_len`` clicks back from ``end``, never before the user's
    ``first`` click."""
    return np.maximum(np.asarray(end) - max_len, np.asarray(first))


def last_clicks_before(ts: Any, before: float, max_len: int) -> slice:
    """The window of one user whose clicks' ``ts`` are sorted ascending: the slice of the last
    ``max_len`` clicks strictly before ``before``."""
    end = int(window_end(ts, before))
    return slice(int(window_start(end, 0, max_len)), end)
