"""What an export needs from the super-domain log, gathered in one pass over it in bounded memory.

An export (:mod:`trainer.export`) reads three things from the log up to the end of the extractor's
training window: the clicks (each user's behaviour sequence is their last clicks), the distinct
(user, category) pairs (one K̂_uc each) and each item's category and shop (its last row). A
:class:`LogDigest` keeps exactly those while the log streams past in batches
(:func:`contract.log.iter_log` with ``batch_rows``), so memory follows clicks + pairs + items, not rows:
the unclicked impressions, most of a log, are never held. Built from one frame (the whole log in
memory) or from many batches of the same log, it is the same digest, so both exports are the same bytes
(tested).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from contract.log import iter_log
from contract.schema import day_of

#: Log rows per batch when an export streams its log.
SCAN_BATCH_ROWS = 500_000
COMPACT_ROWS = 1_000_000
CLICK_COLUMNS = ("user_id", "ts", "item_id", "category_id")
PAIR_COLUMNS = ("user_id", "category_id")
ITEM_COLUMNS = ("item_id", "category_id", "shop_id")
READ_COLUMNS = ("user_id", "item_id", "category_id", "shop_id", "ts", "click")
#: Given a batch's ``user_id`` column, which of its rows to keep.
UserFilter = Callable[[np.ndarray], np.ndarray]


class _Distinct:
    """Distinct rows of frames added one by one (``keep="last"`` per ``key``, else whole rows), compacted
    whenever the pending rows outgrow the distinct ones, so memory stays within ~2x the distinct rows."""

    def __init__(self, key: str | None, compact_rows: int) -> None:
        self.key = key
        self.compact_rows = compact_rows
        self.done: pd.DataFrame | None = None
        self.pending: list[pd.DataFrame] = []
        self.pending_rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        self.pending.append(self._dedupe(frame))
        self.pending_rows += len(self.pending[-1])
        if self.pending_rows > max(len(self.done) if self.done is not None else 0, self.compact_rows):
            self.compact()

    def compact(self) -> pd.DataFrame:
        frames = ([self.done] if self.done is not None else []) + self.pending
        if frames:
            self.done = self._dedupe(pd.concat(frames, ignore_index=True))
        self.pending, self.pending_rows = [], 0
        assert self.done is not None, "compact() after at least one add()"
        return self.done

    def _dedupe(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.key is None:
            return frame.drop_duplicates()
        return frame.drop_duplicates(self.key, keep="last")


@dataclass(frozen=True)
class LogDigest:
    #: The clicked rows up to the window's end, in log order (user_id, ts, item_id, category_id).
    clicks: pd.DataFrame
    #: The distinct (user_id, category_id) pairs of every row up to the window's end.
    pairs: pd.DataFrame
    #: Each item's last row up to the window's end: item_id, category_id (and shop_id when the log has it).
    items: pd.DataFrame

    @classmethod
    def of(
        cls,
        frames: Iterable[pd.DataFrame],
        last_day: int,
        compact_rows: int = COMPACT_ROWS,
        users: UserFilter | None = None,
    ) -> LogDigest:
        """The digest of a log given as consecutive frames (one, or its batches in log order);
        ``compact_rows``: the fewest pending rows worth de-duplicating again (tests force it low);
        ``users``: keep the clicks and pairs of the users it selects alone (an export by user range; the
        items are always kept whole)."""
        clicks: list[pd.DataFrame] = []
        pairs, items = _Distinct(None, compact_rows), _Distinct("item_id", compact_rows)
        for frame in frames:
            rows = frame[day_of(frame["ts"].to_numpy()) <= last_day]
            items.add(rows[[c for c in ITEM_COLUMNS if c in rows.columns]])
            if users is not None:
                rows = rows[users(rows["user_id"].to_numpy())]
            clicks.append(rows.loc[rows["click"].to_numpy() == 1, list(CLICK_COLUMNS)])
            pairs.add(rows[list(PAIR_COLUMNS)])
        return cls(
            clicks=pd.concat(clicks, ignore_index=True),
            pairs=pairs.compact().reset_index(drop=True),
            items=items.compact().reset_index(drop=True),
        )

    @classmethod
    def scan(
        cls,
        source: str | os.PathLike[str],
        last_day: int,
        batch_rows: int = SCAN_BATCH_ROWS,
        users: UserFilter | None = None,
    ) -> LogDigest:
        """Stream ``source`` (a file or a dataset directory) in batches of ``batch_rows`` rows."""
        batches = (df for _, df in iter_log(source, READ_COLUMNS, batch_rows))
        return cls.of(batches, last_day, users=users)
