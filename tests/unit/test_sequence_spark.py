"""The sequence stage on Spark (local mode) writes what the in-process stage writes, and its dataset
continues in process. Skipped where pyspark or a JDK is missing (a fresh install has neither)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from contract.log import DataError, write_dataset, write_log
from services.errors import InvalidArgument
from tests.unit.test_sequence_stage import MAX_LEN, busy_log
from trainer.cli import main
from trainer.data.sequence_stage import META, STATE, sequence_log

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'keep-recsys[spark]')")
if shutil.which("java") is None:
    pytest.skip("no JDK on this machine: Spark needs Java 17+", allow_module_level=True)

from trainer.data.sequence_spark import sequence_log_spark


def day_tables(root: Path) -> dict[str, pd.DataFrame]:
    return {
        str(f.relative_to(root)): pq.read_table(f).to_pandas() for f in sorted(root.glob("day=*/*.parquet"))
    }


def state(root: Path) -> pd.DataFrame:
    """The saved state as a set of clicks per user, oldest first (users in any order)."""
    df = pq.read_table(root / STATE).to_pandas()
    df["n"] = df.groupby("user_id").cumcount()
    return df.sort_values(["user_id", "n"]).reset_index(drop=True)


def assert_same_dataset(spark_root: Path, arrow_root: Path) -> None:
    got, expected = day_tables(spark_root), day_tables(arrow_root)
    assert list(got) == list(expected)
    for name, table in expected.items():
        other = got[name]
        assert list(other.columns) == list(table.columns), name
        for column in table.columns:  # values and order; Arrow types may be spelled differently
            assert [_plain(v) for v in other[column]] == [_plain(v) for v in table[column]], (name, column)
    pd.testing.assert_frame_equal(state(spark_root), state(arrow_root), check_dtype=False)
    meta = [json.loads((r / META).read_text()) for r in (spark_root, arrow_root)]
    for m in meta:
        m.pop("log")  # the input each was made from
    assert meta[0] == meta[1]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if hasattr(value, "__len__") and not isinstance(value, str) else value


def test_spark_writes_what_the_in_process_stage_writes(tmp_path: Path) -> None:
    """Two files per day and clicks sharing a second: the arrival order breaks ties the same way."""
    df = busy_log(days=3)
    write_dataset(df, tmp_path / "log", files_per_day=2)
    arrow = sequence_log(tmp_path / "log", tmp_path / "arrow", max_len=MAX_LEN)
    spark = sequence_log_spark(tmp_path / "log", tmp_path / "spark", max_len=MAX_LEN, master="local[2]")
    assert spark.days_written == arrow.days_written and spark.rows_written == arrow.rows_written == len(df)
    assert spark.state_clicks == arrow.state_clicks
    assert_same_dataset(tmp_path / "spark", tmp_path / "arrow")
    assert not (tmp_path / "spark" / "_spark").exists()  # Spark's staging is gone


def test_a_spark_dataset_continues_in_process(tmp_path: Path) -> None:
    df = busy_log(days=4)
    for column in ("user_id", "item_id", "category_id"):
        df[column] = "x" + df[column].astype(str)
    days = df["ts"] // 86_400
    write_log(df, tmp_path / "all.parquet")
    write_log(df[days < days.max()], tmp_path / "first.parquet")
    write_log(df[days == days.max()], tmp_path / "new.parquet")
    sequence_log(tmp_path / "all.parquet", tmp_path / "once", max_len=MAX_LEN)
    sequence_log_spark(tmp_path / "first.parquet", tmp_path / "cont", max_len=MAX_LEN, master="local[2]")
    with pytest.raises(InvalidArgument, match="continue it in process"):
        sequence_log_spark(tmp_path / "new.parquet", tmp_path / "cont", max_len=MAX_LEN, master="local[2]")
    more = sequence_log(tmp_path / "new.parquet", tmp_path / "cont", max_len=MAX_LEN)
    assert more.days_written == [int(days.max())]
    assert_same_dataset(tmp_path / "cont", tmp_path / "once")


def test_the_cli_runs_spark_and_bad_logs_get_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = busy_log(days=2)
    write_log(df, tmp_path / "log.parquet")
    log = str(tmp_path / "log.parquet")
    args = ["data", "sequences", log, "--engine", "spark", "--spark-master", "local[2]", "--max-len", "5"]
    assert main([*args, "--out", str(tmp_path / "seq")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_written"] == len(df) and printed["max_len"] == 5
    bad = df.copy()
    bad.loc[7, "click"] = 2
    write_log(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: column 'click' has 1 values not 0/1"):
        sequence_log_spark(tmp_path / "bad.parquet", tmp_path / "bad-seq", master="local[2]")
    assert not (tmp_path / "bad-seq").exists() or not any((tmp_path / "bad-seq").iterdir())
    write_log(df.drop(columns=["ts"]), tmp_path / "nots.parquet")
    with pytest.raises(DataError, match="column 'ts' is missing"):
        sequence_log_spark(tmp_path / "nots.parquet", tmp_path / "nots-seq", master="local[2]")
    df.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(InvalidArgument, match="reads Parquet"):
        sequence_log_spark(tmp_path / "log.csv", tmp_path / "csv-seq")
