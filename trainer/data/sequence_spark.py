"""``keep data sequences LOG --out DATASET --engine spark``: the sequence stage on Apache Spark.

For a log beyond one machine: the same output as the in-process stage (:mod:`trainer.data.sequence_stage`,
whose docstring has the layout and the rule), computed by Spark SQL, so the work spreads over a
cluster's executors (``--spark-master``; ``local[N]`` runs it in this machine's JVM, which is how it is
tested). Per user, the clicks are gathered once and sorted by ``(ts, arrival)``; each row keeps those
strictly before its ``ts`` and then the last ``max_len`` of them. Arrival is the position in the input
(file path, then the row's index in its Parquet file: Spark's ``_metadata``), which is the order the
in-process stage reads, so ties at the same second break the same way and the two engines write the
same rows, in the same order, with the same sequences (tested). ``_state.parquet`` and
``_sequences.json`` are written as the in-process stage writes them, so a later day continues in
process (``keep data sequences`` without ``--engine``): one day's continuation fits one machine.

Cost: a user's click list is held by one task, and each of the user's rows filters it; a user with
millions of clicks makes that task heavy (the in-process stage keeps only ``max_len`` per user).
Spark is imported only here: a fresh install does not need it (``pip install 'keep-recsys[spark]'``,
a JDK 17+).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from contract.log import COLUMNS, DataError
from contract.schema import DEFAULT_MAX_LEN, REQUIRED_COLUMNS, SECONDS_PER_DAY
from services.errors import InvalidArgument
from trainer.data.sequence_stage import (
    HIST_CATEGORY,
    HIST_ITEM,
    STATE,
    SequencesMeta,
    SequencesResult,
    TailState,
    check_target,
    write_day,
)

_DAY, _FILE, _ROW = "__keep_day", "__keep_file", "__keep_row"


def spark_session(master: str) -> Any:
    """A Spark session for the stage (UTC, no UI); the caller stops it."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise InvalidArgument(
            "--engine spark needs pyspark: pip install 'keep-recsys[spark]' (and a JDK 17 or newer)"
        ) from err
    return (
        SparkSession.builder.master(master)
        .appName("keep-data-sequences")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(max(2, os.cpu_count() or 2)))
        .getOrCreate()
    )


def sequence_log_spark(
    log: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_len: int = DEFAULT_MAX_LEN,
    master: str = "local[*]",
) -> SequencesResult:
    """Sequence every day of ``log`` (a Parquet file or dataset) into the new dataset ``out``."""
    src, root = Path(log), Path(out)
    if check_target(src, root, max_len) is not None:
        raise InvalidArgument(
            f"{root} is sequenced already: continue it in process (keep data sequences without --engine), "
            "which reads only the new days and the saved state"
        )
    if src.is_file() and src.suffix != ".parquet":
        raise InvalidArgument(f"--engine spark reads Parquet files and datasets; {src} is not one")
    if not src.exists():
        raise DataError(f"{src}: no such file or directory")
    spark = spark_session(master)
    try:
        return _run(spark, src, root, max_len)
    except BaseException:
        # --out was new or empty: leave it so (a rerun would refuse a half-written directory)
        shutil.rmtree(root / "_spark", ignore_errors=True)
        for day in root.glob("day=*"):
            shutil.rmtree(day, ignore_errors=True)
        raise
    finally:
        spark.stop()


def _run(spark: Any, src: Path, root: Path, max_len: int) -> SequencesResult:
    from pyspark.sql import functions as F

    rows = (
        spark.read.option("recursiveFileLookup", "true")  # no partition columns: the files' own only
        .parquet(str(src))
        .select("*", F.col("_metadata.file_path").alias(_FILE), F.col("_metadata.row_index").alias(_ROW))
    )
    if HIST_ITEM in rows.columns:
        raise DataError(f"{src}: has a '{HIST_ITEM}' column already; is it sequenced?")
    columns, contract = _contract_columns(rows, str(src))
    rows = rows.select(*contract, _FILE, _ROW)
    rows = rows.withColumn(_DAY, F.floor(F.col("ts") / SECONDS_PER_DAY).cast("long"))
    click = F.struct(
        F.col("ts").cast("long").alias("ts"), F.col(_FILE).alias("f"), F.col(_ROW).alias("r"),
        F.col("item_id").alias("item"), F.col("category_id").alias("cat"),
    )  # fmt: skip
    clicks = (
        rows.where(F.col("click").cast("int") == 1)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(click)).alias("clicks"))  # by (ts, file, row): arrival order
    )

    def last(values: Any) -> Any:
        """The last ``max_len`` elements of an array column (all of them when shorter)."""
        return F.slice(values, F.greatest(F.size(values) - max_len + 1, F.lit(1)), max_len)

    window = last(F.filter(F.coalesce("clicks", F.array()), lambda c: c["ts"] < F.col("ts").cast("long")))
    sequenced = rows.join(clicks, "user_id", "left").select(
        *columns,
        F.transform(window, lambda c: c["item"]).alias(HIST_ITEM),
        F.transform(window, lambda c: c["cat"]).alias(HIST_CATEGORY),
        _DAY, _FILE, _ROW,
    )  # fmt: skip
    staging = root / "_spark"
    (
        sequenced.repartition(_DAY)
        .sortWithinPartitions(_DAY, _FILE, _ROW)  # each day's rows in input order, in one file
        .drop(_FILE, _ROW)
        .write.partitionBy(_DAY)
        .parquet(str(staging))
    )
    tail = clicks.select("user_id", F.posexplode(last(F.col("clicks")))).select(
        "user_id", "pos", F.col("col.item").alias("item_id"), F.col("col.cat").alias("category_id"),
        F.col("col.ts").alias("ts"),
    )  # fmt: skip
    tail.write.parquet(str(staging / "_tail"))
    return _finish(src, root, staging, max_len)


def _contract_columns(rows: Any, source: str) -> tuple[list[str], list[Any]]:
    """The log's contract columns in the contract's order and types, as ``contract.log.validate``
    makes them (ids int64 or string, ``ts`` int64, labels int8), after one pass that checks them:
    their names and the expressions."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kinds = dict(rows.dtypes)
    present = [c for c in COLUMNS if c.name in kinds]
    missing = [c.name for c in COLUMNS if c.required and c.name not in kinds]
    if missing:
        raise DataError(
            f"{source}: column '{missing[0]}' is missing (required: {', '.join(REQUIRED_COLUMNS)})"
        )
    fields = {f.name: f.dataType for f in rows.schema.fields}
    integral = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    checks, out = [], []
    for col in present:
        kind, c = fields[col.name], F.col(col.name)
        checks.append(F.sum(c.isNull().cast("long")).alias(f"{col.name}:missing values"))
        if isinstance(kind, T.BooleanType) and col.kind != "label":
            raise DataError(f"{source}: column '{col.name}' must be int64 or string ids, got booleans")
        if col.kind == "ts":
            if not isinstance(kind, integral):
                raise DataError(f"{source}: column 'ts' must be int64 unix seconds, got {kinds['ts']}")
            checks.append(F.sum((c < 0).cast("long")).alias("ts:negative timestamps"))
            out.append(c.cast("long").alias("ts"))
        elif col.kind == "label":
            if not isinstance(kind, (*integral, T.BooleanType)):
                raise DataError(f"{source}: column '{col.name}' must be 0/1 integers, got {kinds[col.name]}")
            checks.append(F.sum((~c.cast("int").isin(0, 1)).cast("long")).alias(f"{col.name}:values not 0/1"))
            out.append(c.cast("tinyint").alias(col.name))
        elif isinstance(kind, (*integral, T.FloatType, T.DoubleType)):
            if isinstance(kind, (T.FloatType, T.DoubleType)):
                checks.append(
                    F.sum((c != F.floor(c)).cast("long")).alias(f"{col.name}:non-integer float ids")
                )
            out.append(c.cast("long").alias(col.name))
        else:
            out.append(c.cast("string").alias(col.name))
    counts = rows.agg(*checks).first()
    if counts is None:
        raise DataError(f"{source}: file is empty (no rows)")
    for name, bad in counts.asDict().items():
        if bad:
            column, why = name.split(":", 1)
            raise DataError(f"{source}: column '{column}' has {bad} {why}")
    return [c.name for c in present], out


def _finish(src: Path, root: Path, staging: Path, max_len: int) -> SequencesResult:
    """Move Spark's day folders into the stage's layout and write the state and the manifest."""
    days: list[int] = []
    counts: list[int] = []
    for folder in sorted(staging.glob(f"{_DAY}=*"), key=lambda p: int(p.name.split("=", 1)[1])):
        day = int(folder.name.split("=", 1)[1])
        parts = sorted(folder.glob("*.parquet"))
        if len(parts) != 1:
            raise DataError(f"Spark wrote {len(parts)} files for day {day}; expected one")
        table = pq.read_table(parts[0])
        write_day(root, day, table)
        days.append(day)
        counts.append(table.num_rows)
    if not days:
        raise DataError(f"{src}: no rows to sequence")
    tail = pq.read_table(staging / "_tail").to_pandas()
    order = np.lexsort((tail["pos"].to_numpy(), tail["user_id"].to_numpy()))  # by user, oldest first
    tail = tail.iloc[order]
    state = TailState.of(tail)  # ts: Spark's long, int64 as in process
    state.save(root / STATE)
    shutil.rmtree(staging)
    SequencesMeta(max_len, tuple(days), tuple(counts), str(src.resolve())).save(root)
    return SequencesResult(root, max_len, days, [], sum(counts), len(state))
