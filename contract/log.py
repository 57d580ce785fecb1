"""Reading, validating and writing impression logs (the contract of :mod:`contract.schema`).

Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``). Validation gives one clear
:class:`DataError` naming the file and the column; the CLI prints it as one line and exits non-zero.
Every reader of a log (pre-training, training, evaluation, the ranker's feature store) goes through
:func:`read_log`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract.schema import (
    ID_COLUMNS,
    LOG_SUFFIXES,
    OPTIONAL_ID_COLUMNS,
    OPTIONAL_LABEL_COLUMNS,
    PARQUET_SUFFIXES,
    REQUIRED_COLUMNS,
    TASKS,
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
    the check and the result to those (each must exist); by default every contract column present.
    """
    if len(df) == 0:
        raise DataError(f"{source}: file is empty (no rows)")
    wanted = [_BY_NAME[c] for c in columns] if columns is not None else list(COLUMNS)
    out: dict[str, pd.Series] = {}
    for col in wanted:
        if col.name not in df.columns:
            if columns is not None:
                raise _fail(source, col.name, "is missing (needed: " + ", ".join(columns) + ")")
            if col.required:
                raise _fail(source, col.name, "is missing (required: " + ", ".join(REQUIRED_COLUMNS) + ")")
            continue
        out[col.name] = _normalise(col, df[col.name], source)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def tasks_present(df: pd.DataFrame) -> list[str]:
    """The tasks this log can train: click always, conversion/cart when their column exists."""
    return [task for task in TASKS if task in df.columns]


def is_log_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has an impression-log suffix."""
    return str(path).endswith(LOG_SUFFIXES)


def read_log(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet or CSV impression log and validate it; :class:`DataError` names file and column.

    ``columns``: read and return only these contract columns (Parquet reads nothing else).
    """
    file = Path(path)
    name = str(file)
    unknown = [c for c in columns or () if c not in _BY_NAME]
    if unknown:
        raise InvalidArgument(f"not contract columns: {unknown}")
    if file.is_dir():
        raise DataError(f"{name}: is a directory; expected a log file ({', '.join(LOG_SUFFIXES)})")
    if not file.is_file():
        raise DataError(f"{name}: no such file")
    if file.stat().st_size == 0:
        raise DataError(f"{name}: file is empty (0 bytes)")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            present = set(pq.read_schema(file).names)
            wanted = None if columns is None else [c for c in columns if c in present]
            df = pq.read_table(file, columns=wanted).to_pandas()
        elif name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(file, low_memory=False, usecols=lambda c: columns is None or c in columns)
        else:
            raise DataError(f"{name}: unknown format; expected one of {', '.join(LOG_SUFFIXES)}")
    except DataError:
        raise
    except (
        pa.ArrowInvalid,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
    ) as err:
        raise DataError(f"{name}: cannot be read as {file.suffix.lstrip('.')} ({err})") from err
    return validate(df, name, columns)


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
