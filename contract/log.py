"""Reading, validating and writing impression logs (the contract of :mod:`contract.schema`).

A log is one file, Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``), or a *dataset*: a
directory of Parquet files, optionally hive-partitioned by day (``day=YYYY-MM-DD/part-0.parquet``),
read with ``pyarrow.dataset`` fragment by fragment (:func:`iter_log`). Validation gives one clear
:class:`DataError` naming the file (the fragment) and the column; the CLI prints it as one line and
exits 2. Every reader of a log (pre-training, training, evaluation, the ranker's feature store) goes
through :func:`read_log` or :func:`iter_log`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from contract.schema import (
    ID_COLUMNS,
    LOG_SUFFIXES,
    OPTIONAL_ID_COLUMNS,
    OPTIONAL_LABEL_COLUMNS,
    PARQUET_SUFFIXES,
    REQUIRED_COLUMNS,
    SECONDS_PER_DAY,
    TASKS,
    day_of,
)
from services.errors import InvalidArgument


class DataError(InvalidArgument):
    """A data file that breaks the contract: missing column, wrong type, empty, bad labels."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "id" | "ts" | "label"
    required: bool


COLUMNS = (
    *(Column(c, "id", True) for c in ID_COLUMNS),
    Column("ts", "ts", True),
    Column("click", "label", True),
    *(Column(c, "label", False) for c in OPTIONAL_LABEL_COLUMNS),
    *(Column(c, "id", False) for c in OPTIONAL_ID_COLUMNS),
)
_BY_NAME = {c.name: c for c in COLUMNS}


def _fail(source: str, column: str, why: str) -> DataError:
    return DataError(f"{source}: column '{column}' {why}")


def _normalise_id(series: pd.Series, source: str, name: str) -> pd.Series:
    if series.isna().any():
        raise _fail(source, name, f"has {int(series.isna().sum())} missing values")
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype(np.int64)
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy()
        if not np.all(np.mod(values, 1) == 0):
            raise _fail(source, name, "must be int64 or string ids, got non-integer floats")
        return series.astype(np.int64)
    if pd.api.types.is_bool_dtype(series.dtype):
        raise _fail(source, name, "must be int64 or string ids, got booleans")
    return series.astype(str).astype(object)


def _normalise(col: Column, series: pd.Series, source: str) -> pd.Series:
    if col.kind == "id":
        return _normalise_id(series, source, col.name)
    if col.kind == "ts":
        if not pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            raise _fail(source, col.name, f"must be int64 unix seconds, got {series.dtype}")
        if (series < 0).any():
            raise _fail(source, col.name, "has negative timestamps")
        return series.astype(np.int64)
    if series.isna().any():
        raise _fail(source, col.name, f"has {int(series.isna().sum())} missing labels")
    if not (pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)):
        raise _fail(source, col.name, f"must be 0/1 integers, got {series.dtype}")
    values = series.astype(np.int64)
    if not values.isin((0, 1)).all():
        bad = values[~values.isin((0, 1))].iloc[0]
        raise _fail(source, col.name, f"must be 0/1, found {bad}")
    return values.astype(np.int8)


def validate(df: pd.DataFrame, source: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Check and normalise ``df`` in the contract; returns a frame with only contract columns.

    ids → int64 (or Python str objects), ``ts`` → int64, labels → int8 in {0, 1}. ``columns`` limits
    the check and the result to those (each required one must exist, an optional one, such as
    ``shop_id``, is taken when present); by default every contract column present.
    """
    if len(df) == 0:
        raise DataError(f"{source}: file is empty (no rows)")
    wanted = [_BY_NAME[c] for c in columns] if columns is not None else list(COLUMNS)
    out: dict[str, pd.Series] = {}
    for col in wanted:
        if col.name not in df.columns:
            if not col.required:  # optional (shop_id, ...): taken when present
                continue
            if columns is not None:
                raise _fail(source, col.name, "is missing (needed: " + ", ".join(columns) + ")")
            raise _fail(source, col.name, "is missing (required: " + ", ".join(REQUIRED_COLUMNS) + ")")
        out[col.name] = _normalise(col, df[col.name], source)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def tasks_present(df: pd.DataFrame) -> list[str]:
    """The tasks this log can train: click always, conversion/cart when their column exists."""
    return [task for task in TASKS if task in df.columns]


def is_log_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has an impression-log suffix."""
    return str(path).endswith(LOG_SUFFIXES)


def _check_columns(columns: Sequence[str] | None) -> None:
    unknown = [c for c in columns or () if c not in _BY_NAME]
    if unknown:
        raise InvalidArgument(f"not contract columns: {unknown}")


def read_log(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a log (a file or a dataset directory) and validate it; :class:`DataError` names the file
    (the fragment) and the column.

    ``columns``: read and return only these contract columns (Parquet reads nothing else). A dataset's
    fragments are concatenated in :func:`log_fragments` order (day partition, then path).
    """
    _check_columns(columns)
    if Path(path).is_dir():
        frames = [df for _, df in iter_log(path, columns)]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return _read_file(Path(path), columns)


def _read_file(file: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    (df,) = _file_batches(file, columns, None)
    return df


def _file_batches(
    file: Path, columns: Sequence[str] | None, batch_rows: int | None
) -> Iterator[pd.DataFrame]:
    """The validated frame of a file, whole (``batch_rows`` None) or in batches of at most that many rows
    (Parquet record batches, CSV chunks), in file order."""
    name = str(file)
    if not file.is_file():
        raise DataError(f"{name}: no such file")
    if file.stat().st_size == 0:
        raise DataError(f"{name}: file is empty (0 bytes)")
    if not name.endswith(LOG_SUFFIXES):
        raise DataError(f"{name}: unknown format; expected one of {', '.join(LOG_SUFFIXES)}")
    try:
        chunks: Iterator[pd.DataFrame]
        if name.endswith(PARQUET_SUFFIXES):
            present = set(pq.read_schema(file).names)
            wanted = None if columns is None else [c for c in columns if c in present]
            if batch_rows is None:
                chunks = iter([pq.read_table(file, columns=wanted).to_pandas()])
            else:
                batches = pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=wanted)
                chunks = (b.to_pandas() for b in batches)
        else:
            usecols = None if columns is None else (lambda c: c in columns)
            if batch_rows is None:
                chunks = iter([pd.read_csv(file, low_memory=False, usecols=usecols)])
            else:
                chunks = pd.read_csv(file, low_memory=False, usecols=usecols, chunksize=batch_rows)
        for chunk in chunks:
            yield validate(chunk.reset_index(drop=True), name, columns)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{name}: cannot be read as {file.suffix.lstrip('.')} ({err})") from err


_READ_ERRORS = (
    pa.ArrowInvalid,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    UnicodeDecodeError,
    OSError,
)


@dataclass(frozen=True)
class Fragment:
    """One Parquet file of a dataset directory and the day of its ``day=YYYY-MM-DD`` partition."""

    path: Path
    #: Day number (unix seconds // 86400) of the hive partition, ``None`` outside one.
    day: int | None
    fragment: pds.Fragment


def _partition_day(root: Path, file: Path) -> int | None:
    day: int | None = None
    for part in file.relative_to(root).parts[:-1]:
        key, sep, value = part.partition("=")
        if not sep or key != "day":
            continue
        try:
            date = dt.date.fromisoformat(value)
        except ValueError as err:
            raise DataError(f"{file}: partition '{part}' is not a day=YYYY-MM-DD date") from err
        day = (date - dt.date(1970, 1, 1)).days
    return day


def log_fragments(path: str | os.PathLike[str]) -> list[Fragment]:
    """The Parquet fragments of a dataset directory, by day partition then path (``_``/``.`` files
    are skipped, as ``pyarrow.dataset`` does); :class:`DataError` when there are none."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset directory")
    try:
        dataset = pds.dataset(str(root), format="parquet", exclude_invalid_files=False)
    except _READ_ERRORS as err:
        raise DataError(f"{root}: cannot be read as a Parquet dataset ({err})") from err
    out = []
    for fragment in dataset.get_fragments():
        file = Path(fragment.path)
        out.append(Fragment(file, _partition_day(root, file), fragment))
    if not out:
        raise DataError(f"{root}: dataset directory holds no Parquet files")
    return sorted(out, key=lambda f: (f.day if f.day is not None else -1, str(f.path)))


def iter_log(
    path: str | os.PathLike[str], columns: Sequence[str] | None = None, batch_rows: int | None = None
) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(source, validated frame)`` per file: once for a file, per fragment for a dataset directory;
    with ``batch_rows``, in frames of at most that many rows (a file's record batches or CSV chunks, a
    fragment's record batches), in the same order.

    Memory is one fragment (one batch) at a time. Each fragment is checked on its own (its file named in
    the error) and against the first: the same optional columns, the same id kinds (int64 or string),
    and rows of a ``day=`` partition all inside that day.
    """
    _check_columns(columns)
    if batch_rows is not None and batch_rows < 1:
        raise InvalidArgument(f"batch_rows must be >= 1, got {batch_rows}")
    if not Path(path).is_dir():
        first_batch: pd.DataFrame | None = None
        for df in _file_batches(Path(path), columns, batch_rows):
            if first_batch is None:
                first_batch = df
            else:  # a CSV's chunks are typed one by one: the same id kinds, or a loud error
                _check_like_first(df, str(path), f"{path}'s first {batch_rows} rows", first_batch)
            yield str(path), df
        return
    first: tuple[str, pd.DataFrame] | None = None
    for frag in log_fragments(path):
        name = str(frag.path)
        if frag.path.stat().st_size == 0:
            raise DataError(f"{name}: file is empty (0 bytes)")
        try:
            present = set(frag.fragment.physical_schema.names)
            wanted = None if columns is None else [c for c in columns if c in present]
            frames: Iterable[pd.DataFrame]
            if batch_rows is None:
                frames = [frag.fragment.to_table(columns=wanted).to_pandas()]
            else:
                batches = frag.fragment.to_batches(columns=wanted, batch_size=batch_rows)
                frames = (b.to_pandas() for b in batches)
            for frame in frames:
                df = validate(frame, name, columns)
                if frag.day is not None:
                    _check_partition_day(df, name, frag.day)
                if first is None:
                    first = (name, df)
                else:
                    _check_like_first(df, name, *first)
                yield name, df
        except _READ_ERRORS as err:
            raise DataError(f"{name}: cannot be read as parquet ({err})") from err


def _check_partition_day(df: pd.DataFrame, name: str, day: int) -> None:
    days = day_of(df["ts"].to_numpy())
    outside = days != day
    if outside.any():
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        bad = int(df["ts"].to_numpy()[outside][0])
        raise _fail(
            name,
            "ts",
            f"has {int(outside.sum())} rows outside its partition day={date.isoformat()} "
            f"(first: {bad}, day {bad // SECONDS_PER_DAY})",
        )


def _check_like_first(df: pd.DataFrame, name: str, first_name: str, first: pd.DataFrame) -> None:
    for column in sorted(set(first.columns) ^ set(df.columns)):
        where = "missing here" if column in first.columns else "present here"
        elsewhere = "present" if column in first.columns else "missing"
        raise _fail(name, column, f"is {where} but {elsewhere} in {first_name}")
    for column in df.columns:
        if _BY_NAME[column].kind != "id":
            continue
        kind, first_kind = (_id_kind(frame[column]) for frame in (df, first))
        if kind != first_kind:
            raise _fail(name, column, f"holds {kind} ids but {first_name} holds {first_kind} ids")


def _id_kind(series: pd.Series) -> str:
    return "int64" if pd.api.types.is_integer_dtype(series.dtype) else "string"


def write_log(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write Parquet (or CSV by suffix) deterministically: same frame, same bytes."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    if str(file).endswith((".csv", ".csv.gz")):
        df.to_csv(file, index=False)
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, file, compression="zstd", write_statistics=False)
    return file


def summarise_log(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Rows, distinct ids, days, click rate and tasks of a log, one fragment in memory at a time."""
    rows = clicks = 0
    uniques: dict[str, Any] = {}
    days: set[int] = set()
    tasks: list[str] = []
    for _, df in iter_log(path):
        rows += len(df)
        clicks += int(df["click"].sum())
        for column in ID_COLUMNS:
            values = pd.unique(df[column])
            seen = uniques.get(column)
            uniques[column] = values if seen is None else pd.unique(np.concatenate([seen, values]))
        days.update(np.unique(day_of(df["ts"].to_numpy())).tolist())
        tasks = tasks_present(df)
    return {
        "rows": rows,
        "users": len(uniques["user_id"]),
        "items": len(uniques["item_id"]),
        "categories": len(uniques["category_id"]),
        "days": len(days),
        "first_day": min(days),
        "last_day": max(days),
        "click_rate": round(clicks / rows, 6),
        "tasks": tasks,
    }


def write_dataset(df: pd.DataFrame, root: str | os.PathLike[str], *, files_per_day: int = 1) -> list[Path]:
    """Write ``df`` as a dataset of day partitions (``root/day=YYYY-MM-DD/part-K.parquet``), each
    day's rows in their order in ``df``, cut into ``files_per_day`` files. :func:`read_log` on
    ``root`` gives ``df``'s rows back grouped by day (the same frame when ``df`` is sorted by day)."""
    base = Path(root)
    days = day_of(df["ts"].to_numpy())
    out = []
    for day in np.unique(days):
        rows = df[days == day]
        date = dt.date(1970, 1, 1) + dt.timedelta(days=int(day))
        for k, part in enumerate(np.array_split(np.arange(len(rows)), files_per_day)):
            if len(part):
                out.append(write_log(rows.iloc[part], base / f"day={date.isoformat()}" / f"part-{k}.parquet"))
    return out
