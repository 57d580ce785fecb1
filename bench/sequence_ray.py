"""The sequence stage on Ray Data, measured against the in-process stage and Spark (issue 12: "Spark or
Ray Data: choose by measurement"). A measurement, not an engine of ``keep data sequences``: Ray is not
a dependency of this project (docs/scale.md, "Why Spark and not Ray Data", has the figures and the
reasons). Run it in an environment with Ray::

    python -m venv /tmp/rv && /tmp/rv/bin/pip install 'ray[data]==2.58.0' pandas pyarrow psutil
    PYTHONPATH=. /tmp/rv/bin/python -m bench.sequence_ray LOG.parquet OUT [--cpus 2]
    python -m bench.tree_peak /tmp/rv/bin/python -m bench.sequence_ray LOG.parquet OUT --skip-inprocess

It writes the stage's layout (day partitions, ``_state.parquet``, ``_sequences.json``) by the same rule:
each Parquet row group is read by a task that numbers its rows (arrival = file, then row), the rows are
grouped by user (``groupby().map_groups``), and each user's rows take the last ``max_len`` of that
user's clicks strictly before their ``ts``, clicks ordered by ``(ts, arrival)``; each day's rows go back
into arrival order. The JSON it prints says whether the output equals the in-process stage's (run
beside it into ``OUT.inprocess``), with both wall times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract.log import COLUMNS, log_fragments
from contract.schema import DEFAULT_MAX_LEN, SECONDS_PER_DAY
from trainer.data.sequence_stage import (
    HIST_CATEGORY,
    HIST_ITEM,
    STATE,
    SequencesMeta,
    TailState,
    sequence_log,
    write_day,
)

_DAY, _FILE, _ROW = "__keep_day", "__keep_file", "__keep_row"


def _row_groups(src: Path) -> list[dict[str, Any]]:
    """Every row group of the log, files in the order the in-process stage reads them (``log_fragments``:
    day partition, then path), so arrival numbers match."""
    files = [src] if src.is_file() else [f.path for f in log_fragments(src)]
    out = []
    for fid, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        offset = 0
        for group in range(meta.num_row_groups):
            out.append({"path": str(path), "fid": fid, "group": group, "offset": offset})
            offset += meta.row_group(group).num_rows
    return out


def _read_group(batch: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for path, fid, group, offset in batch[["path", "fid", "group", "offset"]].itertuples(index=False):
        df = pq.ParquetFile(path).read_row_group(int(group)).to_pandas()
        df[_FILE] = int(fid)
        df[_ROW] = int(offset) + np.arange(len(df), dtype=np.int64)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def _by_time(clicks: pd.DataFrame) -> pd.DataFrame:
    """Clicks in ``(ts, arrival)`` order, the stage's order."""
    return clicks.iloc[
        np.lexsort((clicks[_ROW].to_numpy(), clicks[_FILE].to_numpy(), clicks["ts"].to_numpy()))
    ]


def _windows(max_len: int) -> Any:
    def per_user(rows: pd.DataFrame) -> pa.Table:
        clicks = _by_time(rows[rows["click"].astype(int) == 1])
        ts = clicks["ts"].to_numpy(np.int64)
        hi = np.searchsorted(ts, rows["ts"].to_numpy(np.int64), side="left")  # strictly before ts
        lo = np.maximum(hi - max_len, 0)
        offsets = np.concatenate([[0], np.cumsum(hi - lo)])
        at = np.repeat(lo - offsets[:-1], hi - lo) + np.arange(offsets[-1])  # each window's clicks
        out = pa.Table.from_pandas(rows, preserve_index=False)
        for name, column in ((HIST_ITEM, "item_id"), (HIST_CATEGORY, "category_id")):
            values = pa.array(clicks[column].to_numpy()[at])
            out = out.append_column(name, pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values))
        return out.append_column(_DAY, pa.array(rows["ts"].to_numpy(np.int64) // SECONDS_PER_DAY))

    return per_user


def _tails(max_len: int) -> Any:
    def per_user(clicks: pd.DataFrame) -> pd.DataFrame:
        last = _by_time(clicks).iloc[-max_len:]
        return last[["user_id", "item_id", "category_id", "ts"]].reset_index(drop=True)

    return per_user


def sequence_log_ray(src: Path, root: Path, max_len: int = DEFAULT_MAX_LEN) -> dict[str, Any]:
    import ray
    import ray.data as rd
    from ray.data.expressions import col

    staging = root / "_ray"
    groups = rd.from_items(_row_groups(src)).map_batches(_read_group, batch_size=1, batch_format="pandas")
    rows = groups.materialize()
    sequenced = rows.groupby("user_id").map_groups(_windows(max_len), batch_format="pandas")
    sequenced.write_parquet(str(staging / "rows"), partition_cols=[_DAY])
    clicks = rows.filter(expr=col("click") == 1)
    clicks.groupby("user_id").map_groups(_tails(max_len), batch_format="pandas").write_parquet(
        str(staging / "tail")
    )
    days, counts = [], []
    for folder in sorted((staging / "rows").glob(f"{_DAY}=*"), key=lambda p: int(p.name.split("=")[1])):
        day = int(folder.name.split("=")[1])
        table = pq.read_table(folder).to_pandas()
        table = table.sort_values([_FILE, _ROW], kind="stable")
        keep = [c.name for c in COLUMNS if c.name in table.columns]  # the contract's, in its order
        table = table[[*keep, HIST_ITEM, HIST_CATEGORY]]
        write_day(root, day, pa.Table.from_pandas(table, preserve_index=False))
        days.append(day)
        counts.append(len(table))
    tail = pq.read_table(staging / "tail").to_pandas()
    TailState.of(tail.sort_values(["user_id"], kind="stable").reset_index(drop=True)).save(root / STATE)
    shutil.rmtree(staging)
    SequencesMeta(max_len, tuple(days), tuple(counts), str(src.resolve())).save(root)
    ray.shutdown()
    return {"days": len(days), "rows": sum(counts)}


def _same(a: Path, b: Path) -> dict[str, Any]:
    """Day by day, every column of both datasets equal, row by row."""
    days_a = sorted(p.name for p in a.glob("day=*"))
    if days_a != sorted(p.name for p in b.glob("day=*")):
        return {"equal": False, "why": "other days"}
    for day in days_a:
        x, y = pq.read_table(a / day).to_pandas(), pq.read_table(b / day).to_pandas()
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return {"equal": False, "why": f"{day}: columns or rows"}
        for col in x.columns:
            xs, ys = x[col].tolist(), y[col].tolist()
            if col in (HIST_ITEM, HIST_CATEGORY):
                xs, ys = [list(v) for v in xs], [list(v) for v in ys]
            if xs != ys:
                return {"equal": False, "why": f"{day}: column {col}"}
    x, y = TailState.load(a / STATE), TailState.load(b / STATE)
    for field in ("user", "item", "category", "ts"):
        if not np.array_equal(np.asarray(getattr(x, field)), np.asarray(getattr(y, field))):
            return {"equal": False, "why": f"state: {field}"}
    return {"equal": True}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--skip-inprocess", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    result = sequence_log_ray(args.log, args.out)
    result["ray_seconds"] = round(time.perf_counter() - t0, 1)
    result["ray_start_seconds"] = round(started, 1)
    if not args.skip_inprocess:
        t0 = time.perf_counter()
        other = args.out.with_name(args.out.name + ".inprocess")
        sequence_log(args.log, other)
        result["inprocess_seconds"] = round(time.perf_counter() - t0, 1)
        result.update(_same(args.out, other))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
