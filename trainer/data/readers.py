"""Read and write impression logs (Parquet or CSV) in the contract."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.schema import DataError, validate

SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")


def read_log(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Parquet or CSV impression log and validate it; :class:`DataError` names file and column."""
    file = Path(path)
    name = str(file)
    if not file.is_file():
        raise DataError(f"{name}: no such file")
    if file.stat().st_size == 0:
        raise DataError(f"{name}: file is empty (0 bytes)")
    try:
        if name.endswith((".parquet", ".pq")):
            df = pq.read_table(file).to_pandas()
        elif name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(file, low_memory=False)
        else:
            raise DataError(f"{name}: unknown format; expected one of {', '.join(SUFFIXES)}")
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
    return validate(df, name)


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
