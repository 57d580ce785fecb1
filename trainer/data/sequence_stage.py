"""``keep data sequences LOG --out DATASET``: behaviour sequences as a data stage (issue 12).

Every row's user's last ``max_len`` clicks strictly before the row's ``ts`` (the one rule of
:mod:`contract.sequences`, applied through :class:`trainer.data.sequences.HistoryIndex`), written as
list columns ``hist_item_id`` / ``hist_category_id`` (raw ids, oldest first) beside the log's own
columns, one day partition at a time:

```
DATASET/day=YYYY-MM-DD/part-0.parquet   the day's rows in input order + the two list columns
DATASET/_sequences.json                 max_len, days done, rows, the input log
DATASET/_state.parquet                  each user's last max_len clicks (user, item, category, ts)
```

Out of core: a day's rows plus the per-user tail state are in memory, never the log. Days are taken
in ascending order; a day's clicks come after the state's (every one of them is earlier), and within
the day in input order, so clicks at the same second keep their arrival order (as the in-memory
index sorts them stably). The state therefore holds everything a later row's window can reach: a
continuation (the same ``--out`` with a log holding new days) sequences only the days after
``_sequences.json``'s last day, from ``_state.parquet``, and gives exactly the rows (and state) of
sequencing every day at once (tested). ``_sequences.json`` and ``_state.parquet`` are written last:
a run stopped midway leaves the previous state, and a rerun rewrites the days after it.

Files starting with ``_`` are skipped by every dataset reader, so a sequenced dataset is still a log
for every command that takes one (the list columns are ignored there).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract.log import DataError, iter_log, log_fragments, read_log
from contract.schema import DEFAULT_MAX_LEN, day_of
from services.errors import InvalidArgument
from trainer.data.sequences import HistoryIndex

META = "_sequences.json"
STATE = "_state.parquet"
HIST_ITEM = "hist_item_id"
HIST_CATEGORY = "hist_category_id"
#: Rows per Parquet row group of a sequenced day (the unit a streaming reader decodes at once).
ROW_GROUP = 262_144
_STATE_COLUMNS = ("user_id", "item_id", "category_id", "ts")


@dataclass(frozen=True)
class SequencesMeta:
    max_len: int
    #: Day numbers sequenced so far, ascending, and their rows.
    days: tuple[int, ...]
    rows: tuple[int, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        return {"max_len": self.max_len, "days": list(self.days), "rows": list(self.rows), "log": self.log}

    def save(self, root: Path) -> None:
        """Written last, atomically: a run stopped before it leaves the previous manifest."""
        tmp = root / f".{META}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, root / META)

    @classmethod
    def load(cls, root: Path) -> SequencesMeta | None:
        file = root / META
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
            return cls(int(data["max_len"]), tuple(data["days"]), tuple(data["rows"]), str(data["log"]))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{file}: not a sequences manifest ({err})") from err


def is_sequenced(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a dataset written by :func:`sequence_log`."""
    return (Path(path) / META).is_file()


def day_dir(root: Path, day: int) -> Path:
    return root / f"day={(dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()}"


@dataclass
class TailState:
    """Each user's last ``max_len`` clicks, grouped by user (sorted ids), oldest first within a user."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    ts: np.ndarray

    @classmethod
    def empty(cls, like: pd.DataFrame) -> TailState:
        return cls(*(like[c].to_numpy()[:0] for c in _STATE_COLUMNS))

    def __len__(self) -> int:
        return len(self.user)

    def save(self, file: Path) -> None:
        table = pa.table({c: getattr(self, c.removesuffix("_id")) for c in _STATE_COLUMNS})
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: Path) -> TailState:
        try:
            df = pq.read_table(file).to_pandas()
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{file}: cannot be read as the sequences state ({err})") from err
        return cls.of(df)

    @classmethod
    def of(cls, df: pd.DataFrame) -> TailState:
        """From a frame with the state's columns, in its row order."""
        return cls(*(df[c].to_numpy() for c in _STATE_COLUMNS))


def _concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) and a.dtype.kind != b.dtype.kind and "O" in (a.dtype.kind, b.dtype.kind):
        return np.concatenate([a.astype(object), b.astype(object)])
    return np.concatenate([a, b])


def sequence_day(day: pd.DataFrame, state: TailState, max_len: int) -> tuple[pa.Table, TailState]:
    """One day's rows (input order) with their sequences as list columns, and the state after the day.

    The clicks are the state's (all from earlier days) then the day's, in input order; the window of
    each row is :class:`HistoryIndex`'s: its user's last ``max_len`` clicks strictly before its ``ts``.
    """
    clicked = day["click"].to_numpy().astype(bool)
    c_user = _concat(state.user, day["user_id"].to_numpy()[clicked])
    c_item = _concat(state.item, day["item_id"].to_numpy()[clicked])
    c_cat = _concat(state.category, day["category_id"].to_numpy()[clicked])
    c_ts = np.concatenate([state.ts, day["ts"].to_numpy(np.int64)[clicked]])
    _, codes = np.unique(_concat(c_user, day["user_id"].to_numpy()), return_inverse=True)
    codes = codes.reshape(-1)
    n_clicks = len(c_user)
    index = HistoryIndex.build(
        codes[:n_clicks],
        c_ts,
        np.ones(n_clicks, dtype=bool),
        {"pos": np.arange(n_clicks, dtype=np.int64)},
        max_len=max_len,
        rows_user=codes[n_clicks:],
        rows_ts=day["ts"].to_numpy(np.int64),
    )
    order = index.fields["pos"]  # click positions sorted by (user, ts), arrival order kept
    end = index.end
    start = np.maximum(end - max_len, index.start)
    lengths = end - start
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = order[np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])]
    table = pa.Table.from_pandas(day, preserve_index=False)
    for name, source, values in ((HIST_ITEM, "item_id", c_item), (HIST_CATEGORY, "category_id", c_cat)):
        kind = table.schema.field(source).type
        column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values[flat], type=kind))
        table = table.append_column(name, column)
    # The new state: every user's last max_len clicks of (state + day), in (user, ts, arrival) order.
    user_sorted = codes[:n_clicks][order]
    group_end = np.searchsorted(user_sorted, user_sorted, side="right")
    keep = order[group_end - np.arange(n_clicks) <= max_len]
    return table, TailState(c_user[keep], c_item[keep], c_cat[keep], c_ts[keep])


def _days_of(path: Path) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(day, rows)`` ascending: a day partition at a time for a partitioned dataset, else the whole
    log read once and cut by day (a single file, or fragments outside ``day=`` partitions)."""
    if path.is_dir():
        fragments = log_fragments(path)
        if all(f.day is not None for f in fragments):
            pending: list[pd.DataFrame] = []
            current: int | None = None
            for (_, df), frag in zip(iter_log(path), fragments, strict=True):
                if current is not None and frag.day != current:
                    yield current, _joined(pending)
                    pending = []
                current = frag.day
                pending.append(df)
            if current is not None:
                yield current, _joined(pending)
            return
    df = read_log(path)
    days = day_of(df["ts"].to_numpy())
    order = np.argsort(days, kind="stable")
    cuts = np.flatnonzero(np.diff(days[order])) + 1
    for chunk in np.split(order, cuts):
        if len(chunk):
            yield int(days[chunk[0]]), df.iloc[chunk].reset_index(drop=True)


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class SequencesResult:
    out: Path
    max_len: int
    days_written: list[int]
    days_skipped: list[int]
    rows_written: int
    state_clicks: int

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "max_len": self.max_len,
            "days_written": self.days_written,
            "days_skipped": self.days_skipped,
            "rows_written": self.rows_written,
            "state_clicks": self.state_clicks,
        }


def check_target(src: Path, root: Path, max_len: int) -> SequencesMeta | None:
    """Refuse a bad ``--max-len``, an ``--out`` that is the input or a non-empty directory that is not a
    sequenced dataset; the dataset's manifest when ``--out`` is one."""
    if max_len < 1:
        raise InvalidArgument(f"--max-len must be >= 1, got {max_len}")
    if src.resolve() == root.resolve():
        raise InvalidArgument(f"--out {root} is the input log; write to another directory")
    meta = SequencesMeta.load(root)
    if meta is None and root.exists() and any(root.iterdir()):
        raise InvalidArgument(f"--out {root} exists and is not a sequenced dataset; choose a new directory")
    return meta


def sequence_log(
    log: str | os.PathLike[str], out: str | os.PathLike[str], *, max_len: int = DEFAULT_MAX_LEN
) -> SequencesResult:
    """Sequence ``log``'s days into the dataset ``out`` (continuing from its state when it has one)."""
    src, root = Path(log), Path(out)
    meta = check_target(src, root, max_len)
    if meta is not None and meta.max_len != max_len:
        raise InvalidArgument(
            f"{root} was sequenced with --max-len {meta.max_len}; continue it with the same (asked {max_len})"
        )
    if meta is not None and not (root / STATE).is_file():
        raise DataError(f"{root}: {STATE} is missing; sequence the log again into a new directory")
    state = TailState.load(root / STATE) if meta is not None else None
    days, rows = list(meta.days) if meta else [], list(meta.rows) if meta else []
    last = days[-1] if days else None
    written: list[int] = []
    skipped: list[int] = []
    n_written = 0
    for day, df in _days_of(src):
        if last is not None and day <= last:
            skipped.append(day)
            continue
        if state is None:
            state = TailState.empty(df)
        table, state = sequence_day(df, state, max_len)
        write_day(root, day, table)
        days.append(day)
        rows.append(table.num_rows)
        written.append(day)
        n_written += table.num_rows
    if state is None:
        raise DataError(f"{src}: no rows to sequence")
    root.mkdir(parents=True, exist_ok=True)
    state.save(root / STATE)
    SequencesMeta(max_len, tuple(days), tuple(rows), str(src.resolve())).save(root)
    return SequencesResult(root, max_len, written, skipped, n_written, len(state))


def write_day(root: Path, day: int, table: pa.Table) -> None:
    """``table`` as the day's one file, atomically (both engines write days through this)."""
    folder = day_dir(root, day)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()  # a rerun after a stop midway rewrites the day
    tmp = folder / f".part-0.parquet.tmp-{os.getpid()}"
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP, write_statistics=False)
    os.replace(tmp, folder / "part-0.parquet")
