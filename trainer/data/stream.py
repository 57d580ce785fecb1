"""Pre-training from a sequenced dataset (``keep data sequences``), one day partition at a time.

Memory is one day's rows (of this rank) plus the model, never the log:

- **vocabularies**: one pass over the training days reading only the id columns, keeping each day's
  distinct ids (the union is what ``Vocabs.build`` makes of all rows at once: sorted, unique).
- **batches**: for each pass and each day, the day's batches are computed from its row count alone
  (``day_batches`` permutes ``range(rows)`` with ``rng(seed, day[, pass])``); this rank then reads
  only the rows of its shards of those batches, one Parquet row group at a time, and encodes them with
  their stored windows (:meth:`EncodedLog.from_windows`). With ``rows_in_memory``, a day with more of
  this rank's rows than that is read in *runs* of consecutive batches of at most that many rows, each
  run reading the day's row groups again and keeping its own rows: memory follows the budget, not the
  size of a day (a big day costs that many more reads of its files). Batches a resumed run already
  holds are not read.
- **hold-out**: the held-out days' rows in parts of at most ``rows_in_memory`` rows, and the popularity
  baseline as click and row counts per item summed day by day.

Rows of a day are in the order the stage wrote them (the input log's), so the batches are the
in-memory path's, row for row, whatever the budget (tested: same batches, same trained parameters).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.ids import VOCAB_COLUMNS, Vocab, Vocabs, sorted_unique
from contract.log import COLUMNS, DataError, read_log, validate
from services.errors import InvalidArgument
from trainer.data.dataset import EncodedLog
from trainer.data.sequence_stage import HIST_CATEGORY, HIST_ITEM, SequencesMeta, day_dir
from trainer.pretrain_steps import day_batches

if TYPE_CHECKING:
    from trainer.distributed import DataParallel

_CONTRACT = [c.name for c in COLUMNS]


@dataclass(frozen=True)
class DayRows:
    """Some rows of one day: the contract columns and their windows (raw ids)."""

    frame: pd.DataFrame
    offsets: np.ndarray
    hist_item: np.ndarray
    hist_category: np.ndarray

    def encode(self, vocabs: Vocabs, max_len: int) -> EncodedLog:
        return EncodedLog.from_windows(
            self.frame,
            vocabs,
            offsets=self.offsets,
            hist_item=self.hist_item,
            hist_category=self.hist_category,
            max_len=max_len,
        )


def _lists(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return offsets, array.flatten().to_numpy(zero_copy_only=False)


class SequencedSource:
    """A dataset written by ``keep data sequences``, streamed day by day."""

    def __init__(self, root: Path) -> None:
        meta = SequencesMeta.load(root)
        if meta is None:
            raise DataError(f"{root}: not a sequenced dataset (no _sequences.json)")
        self.root, self.meta, self.name = root, meta, str(root)
        self._rows = dict(zip(meta.days, meta.rows, strict=True))

    def _files(self, day: int) -> list[Path]:
        files = sorted(day_dir(self.root, day).glob("*.parquet"))
        if not files:
            raise DataError(f"{day_dir(self.root, day)}: no Parquet file for a day _sequences.json lists")
        return files

    def days(self) -> list[int]:
        return list(self.meta.days)

    def columns(self) -> list[str]:
        names = set(pq.read_schema(self._files(self.meta.days[0])[0]).names)
        return [c for c in _CONTRACT if c in names]

    def rows(self, days: Sequence[int]) -> int:
        return sum(self._rows[d] for d in days)

    def read_day(
        self, day: int, rows: np.ndarray | None = None, columns: Sequence[str] | None = None
    ) -> DayRows:
        """The day's rows (``rows``: sorted positions in the day; ``None``: all), a row group at a time."""
        wanted = [c for c in self.columns() if columns is None or c in columns]
        if columns is None:
            wanted += [HIST_ITEM, HIST_CATEGORY]
        tables: list[pa.Table] = []
        offset = 0
        for file in self._files(day):
            try:
                parquet = pq.ParquetFile(file)
                for group in range(parquet.num_row_groups):
                    n = parquet.metadata.row_group(group).num_rows
                    if rows is None:
                        tables.append(parquet.read_row_group(group, columns=wanted))
                    else:
                        lo, hi = np.searchsorted(rows, [offset, offset + n])
                        if hi > lo:
                            table = parquet.read_row_group(group, columns=wanted)
                            tables.append(table.take(pa.array(rows[lo:hi] - offset)))
                    offset += n
            except (OSError, pa.ArrowInvalid) as err:
                raise DataError(f"{file}: cannot be read as parquet ({err})") from err
        if offset != self._rows[day]:
            raise DataError(
                f"{day_dir(self.root, day)}: {offset} rows, _sequences.json says {self._rows[day]}"
            )
        if not tables:  # none of this rank's rows in the day: an empty table of the day's schema
            tables.append(pq.ParquetFile(self._files(day)[0]).read_row_group(0, columns=wanted).slice(0, 0))
        table = pa.concat_tables(tables)
        contract = [c for c in wanted if c in _CONTRACT]
        frame = validate(table.select(contract).to_pandas(), str(day_dir(self.root, day)), contract)
        if columns is not None:
            empty = np.zeros(1, dtype=np.int64)
            return DayRows(frame, empty, empty[:0], empty[:0])
        offsets, items = _lists(table.column(HIST_ITEM))
        _, categories = _lists(table.column(HIST_CATEGORY))
        return DayRows(frame, offsets, items, categories)

    def vocabs(self, days: Sequence[int], init: Vocabs | None = None) -> Vocabs:
        present = [c for c in VOCAB_COLUMNS.values() if c in self.columns()]
        seen: dict[str, np.ndarray] = {}
        for day in days:
            frame = self.read_day(day, columns=present).frame
            for column in present:
                keys = Vocab.build(frame[column].to_numpy()).keys
                if column in seen:
                    keys = sorted_unique(np.concatenate([seen[column], keys]))
                seen[column] = keys

        def vocab(name: str) -> Vocab | None:
            old: Vocab | None = getattr(init, name) if init is not None else None
            column = VOCAB_COLUMNS[name]
            if column not in seen:
                return old
            return Vocab.build(seen[column]) if old is None else old.extended(seen[column])

        user, item, category = vocab("user"), vocab("item"), vocab("category")
        assert user is not None and item is not None and category is not None  # required columns
        return Vocabs(user=user, item=item, category=category, shop=vocab("shop"))

    def check_max_len(self, max_len: int) -> None:
        if max_len > self.meta.max_len:
            raise InvalidArgument(
                f"{self.root} holds sequences of {self.meta.max_len} clicks; --max-len {max_len} needs "
                f"`keep data sequences LOG --out NEW --max-len {max_len}`"
            )

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
    ) -> _DayStream:
        self.check_max_len(max_len)
        return _DayStream(self, list(days), vocabs, seed, batch_size, passes, max_len, group, rows_in_memory)

    def holdout(
        self, vocabs: Vocabs, holdout_days: Sequence[int], max_len: int, rows_in_memory: int | None = None
    ) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        self.check_max_len(max_len)
        rate = self._click_rate(min(holdout_days))
        for day in holdout_days:
            n = self._rows[day]
            step = max(1, rows_in_memory or n)
            for lo in range(0, n, step):
                rows = np.arange(lo, min(n, lo + step)) if step < n else None
                log = self.read_day(day, rows).encode(vocabs, max_len)
                popularity = log.raw["item_id"].map(rate).fillna(0.0).to_numpy(np.float64)
                yield log, popularity

    def _click_rate(self, before: int) -> pd.Series:
        """Each item's click rate over the rows of the days before ``before``, summed day by day."""
        clicks: pd.Series | None = None
        shown: pd.Series | None = None
        for day in (d for d in self.meta.days if d < before):
            day_frame = self.read_day(day, columns=["item_id", "click"]).frame
            by_item = day_frame.assign(click=day_frame["click"].astype(np.int64)).groupby("item_id")["click"]
            day_clicks, day_rows = by_item.sum(), by_item.size()
            clicks = day_clicks if clicks is None else clicks.add(day_clicks, fill_value=0)
            shown = day_rows if shown is None else shown.add(day_rows, fill_value=0)
        if clicks is None or shown is None:
            return pd.Series(dtype=np.float64)
        return clicks / shown

    def frame(self) -> pd.DataFrame:
        return read_log(self.root)


@dataclass
class _DayStream:
    source: SequencedSource
    days: list[int]
    vocabs: Vocabs
    seed: int
    batch_size: int
    passes: int
    max_len: int
    group: DataParallel
    rows_in_memory: int | None = None

    def _day_batches(self, day: int, epoch: int) -> list[np.ndarray]:
        n = self.source.rows([day])
        return day_batches(np.full(n, day, dtype=np.int64), self.seed, self.batch_size, epoch)

    @property
    def sizes(self) -> list[int]:
        out: list[int] = []
        for _ in range(self.passes):
            for day in self.days:
                n, b = self.source.rows([day]), self.batch_size
                out += [b] * (n // b) + ([n % b] if n % b else [])
        return out

    def iter_from(self, start: int) -> Iterator[tuple[EncodedLog, np.ndarray]]:
        index = 0
        for epoch in range(self.passes):
            for day in self.days:
                n, b = self.source.rows([day]), self.batch_size
                count = -(-n // b)
                if index + count <= start:
                    index += count  # a resumed run already holds every batch of this day
                    continue
                batches = [self.group.shard(rows) for rows in self._day_batches(day, epoch)]
                for run in _runs(batches, self.rows_in_memory):
                    if index + len(run) <= start:
                        index += len(run)
                        continue
                    mine = np.unique(np.concatenate(run)) if run else np.zeros(0, np.int64)
                    everything = len(mine) == n
                    log = self.source.read_day(day, None if everything else mine).encode(
                        self.vocabs, self.max_len
                    )
                    for rows in run:
                        if index >= start:
                            yield log, rows if everything else np.searchsorted(mine, rows)
                        index += 1


def _runs(batches: list[np.ndarray], budget: int | None) -> list[list[np.ndarray]]:
    """Consecutive batches grouped into runs of at most ``budget`` rows (a bigger batch alone)."""
    if budget is None:
        return [batches]
    runs: list[list[np.ndarray]] = []
    rows = budget + 1
    for batch in batches:
        if rows + len(batch) > budget:
            runs.append([])
            rows = 0
        runs[-1].append(batch)
        rows += len(batch)
    return runs
