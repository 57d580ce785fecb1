"""Where pre-training reads its rows: the whole log in memory, or a sequenced dataset streamed day by day.

:func:`open_source` picks: a dataset written by ``keep data sequences`` (:mod:`trainer.data.stream`)
is streamed one day partition at a time, each rank reading only the rows of its shards; anything else
(a file, a plain dataset) is read into memory once (:class:`InMemorySource`), with histories indexed
from every click. Both give the same batches for the same seed: the days ascending, each day's rows in
log order permuted by ``rng(seed, day[, pass])`` and cut per day (``trainer.pretrain_steps.day_batches``),
and the same windows (the rule of :mod:`contract.sequences`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from contract.ids import Vocabs
from contract.log import read_log
from contract.schema import day_of
from trainer.data.dataset import EncodedLog
from trainer.pretrain_steps import pass_batches

if TYPE_CHECKING:
    from trainer.distributed import DataParallel


class BatchStream(Protocol):
    @property
    def sizes(self) -> list[int]:
        """The global batch sizes, in training order (every pass, every day)."""
        ...

    def iter_from(self, start: int) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        """``(log, this rank's rows of the batch in log)`` for batches ``start, start + 1, ...``."""
        ...


class LogSource(Protocol):
    name: str

    def days(self) -> list[int]: ...

    def columns(self) -> list[str]: ...

    def rows(self, days: Sequence[int]) -> int: ...

    def vocabs(self, days: Sequence[int], init: Vocabs | None = None) -> Vocabs:
        """The vocabularies of ``days``' rows (``init``'s, grown by their new ids)."""
        ...

    def batches(
        self,
        days: Sequence[int],
        vocabs: Vocabs,
        *,
        seed: int,
        batch_size: int,
        passes: int,
        max_len: int,
        group: DataParallel,
        rows_in_memory: int | None = None,
    ) -> BatchStream:
        """``rows_in_memory``: the most rows of a day this rank encodes at once (``None``: a whole day);
        the batches do not depend on it."""
        ...

    def holdout(
        self, vocabs: Vocabs, holdout_days: Sequence[int], max_len: int, rows_in_memory: int | None = None
    ) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        """The held-out rows (histories from every earlier click) and each row's popularity baseline:
        its item's click rate over the rows before the first held-out day (0 for unseen items), in
        parts of at most ``rows_in_memory`` rows where the source reads by parts (else one)."""
        ...

    def frame(self) -> pd.DataFrame:
        """The whole log in memory (early stopping on small data only)."""
        ...


@dataclass
class _ListStream:
    log: EncodedLog
    row_batches: list[np.ndarray]
    group: DataParallel

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.row_batches]

    def iter_from(self, start: int) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        for rows in self.row_batches[start:]:
            yield self.log, self.group.shard(rows)


class InMemorySource:
    """The whole log as one frame (today's path for files and plain datasets)."""

    def __init__(self, df: pd.DataFrame, name: str) -> None:
        self.df = df
        self.name = name
        self._days = day_of(df["ts"].to_numpy())

    def days(self) -> list[int]:
        return sorted(int(d) for d in np.unique(self._days))

    def columns(self) -> list[str]:
        return list(self.df.columns)

    def rows(self, days: Sequence[int]) -> int:
        return int(np.isin(self._days, list(days)).sum())

    def vocabs(self, days: Sequence[int], init: Vocabs | None = None) -> Vocabs:
        return Vocabs.build(self.df[np.isin(self._days, list(days))], init=init)

    def batches(
        self,
        days: Sequence[int],
        vocabs: Vocabs,
        *,
        seed: int,
        batch_size: int,
        passes: int,
        max_len: int,
        group: DataParallel,
        rows_in_memory: int | None = None,
    ) -> BatchStream:
        window = self.df[np.isin(self._days, list(days))].reset_index(drop=True)
        history = self.df[self._days <= max(days)]
        encoded = EncodedLog.encode(window, vocabs, history_from=history, max_len=max_len)
        return _ListStream(encoded, pass_batches(encoded.day, seed, batch_size, passes), group)

    def holdout(
        self, vocabs: Vocabs, holdout_days: Sequence[int], max_len: int, rows_in_memory: int | None = None
    ) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        yield holdout_inputs(self.df, vocabs, holdout_days, max_len)  # the log is in memory already

    def frame(self) -> pd.DataFrame:
        return self.df


def holdout_inputs(
    df: pd.DataFrame, vocabs: Vocabs, holdout_days: Sequence[int], max_len: int
) -> tuple[EncodedLog, np.ndarray]:
    """:meth:`LogSource.holdout` of a log in memory."""
    days = day_of(df["ts"].to_numpy())
    test = df[np.isin(days, list(holdout_days))].reset_index(drop=True)
    log = EncodedLog.encode(test, vocabs, history_from=df, max_len=max_len)
    rate = df[days < min(holdout_days)].groupby("item_id")["click"].mean()
    return log, test["item_id"].map(rate).fillna(0.0).to_numpy(np.float64)


def open_source(path: str | os.PathLike[str]) -> LogSource:
    """A sequenced dataset streams; any other log is read into memory."""
    from trainer.data.sequence_stage import is_sequenced

    if is_sequenced(path):
        from trainer.data.stream import SequencedSource

        return SequencedSource(Path(path))
    return InMemorySource(read_log(path), str(path))
