"""Column contract of an impression log and its validation (DESIGN §3).

Validation gives one clear :class:`DataError` naming the file and the column; the CLI prints it as one
line and exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.errors import InvalidArgument

ID_COLUMNS = ("user_id", "item_id", "category_id")
OPTIONAL_ID_COLUMNS = ("shop_id", "session_id")
LABEL_COLUMNS = ("click",)
OPTIONAL_LABEL_COLUMNS = ("conversion", "cart")
REQUIRED_COLUMNS = (*ID_COLUMNS, "ts", *LABEL_COLUMNS)
TASK_LABELS = {"click": "click", "conversion": "conversion", "cart": "cart"}
SECONDS_PER_DAY = 86_400


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


def validate(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and normalise ``df`` in the contract; returns a frame with only contract columns.

    ids → int64 (or Python str objects), ``ts`` → int64, labels → int8 in {0, 1}.
    """
    if len(df) == 0:
        raise DataError(f"{source}: file is empty (no rows)")
    out: dict[str, pd.Series] = {}
    for col in COLUMNS:
        if col.name not in df.columns:
            if col.required:
                raise _fail(source, col.name, "is missing (required: " + ", ".join(REQUIRED_COLUMNS) + ")")
            continue
        series = df[col.name]
        if col.kind == "id":
            out[col.name] = _normalise_id(series, source, col.name)
        elif col.kind == "ts":
            if not pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
                raise _fail(source, col.name, f"must be int64 unix seconds, got {series.dtype}")
            if (series < 0).any():
                raise _fail(source, col.name, "has negative timestamps")
            out[col.name] = series.astype(np.int64)
        else:
            if series.isna().any():
                raise _fail(source, col.name, f"has {int(series.isna().sum())} missing labels")
            if not (pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)):
                raise _fail(source, col.name, f"must be 0/1 integers, got {series.dtype}")
            values = series.astype(np.int64)
            if not values.isin((0, 1)).all():
                bad = values[~values.isin((0, 1))].iloc[0]
                raise _fail(source, col.name, f"must be 0/1, found {bad}")
            out[col.name] = values.astype(np.int8)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def tasks_present(df: pd.DataFrame) -> list[str]:
    """The label tasks this log can train: click always, conversion/cart when their column exists."""
    return [task for task, col in TASK_LABELS.items() if col in df.columns]


def day_of(ts: np.ndarray | pd.Series) -> np.ndarray:
    return np.asarray(ts, dtype=np.int64) // SECONDS_PER_DAY
