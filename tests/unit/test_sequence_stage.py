"""Behaviour sequences as a data stage (issue 12 deliver 2): ``keep data sequences`` writes each row's
last ``max_len`` clicks strictly before its ``ts`` as list columns, exactly the in-memory index's
windows; a continuation from the saved state equals sequencing every day at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from contract.log import DataError, read_log, write_dataset, write_log
from services.errors import InvalidArgument
from tests.support.stage1_data import tiny_log
from trainer.cli import main
from trainer.data.sequence_stage import HIST_CATEGORY, HIST_ITEM, META, STATE, is_sequenced, sequence_log
from trainer.data.sequences import HistoryIndex

MAX_LEN = 8


def busy_log(days: int = 4, **kw: object) -> pd.DataFrame:
    """Few users, many clicks each (windows fill and truncate), and ts on 10-minute ticks so that many
    clicks share a second with other clicks and with the rows they precede."""
    df = tiny_log(users=12, items=40, days=days, rows_per_day=300, **kw)  # type: ignore[arg-type]
    df["ts"] = df["ts"] // 600 * 600
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def expected_windows(df: pd.DataFrame, max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """The in-memory rule on the whole log: HistoryIndex over every click, rows in file order."""
    codes = pd.factorize(df["user_id"])[0]
    clicks = np.flatnonzero(df["click"].to_numpy() == 1)
    index = HistoryIndex.build(
        codes,
        df["ts"].to_numpy(),
        df["click"].to_numpy(),
        {"row": np.arange(len(df)) + 1},  # 1-based: 0 is the padding
        max_len=max_len,
    )
    assert len(clicks) == len(index.fields["row"])
    windows = index.gather(np.arange(len(df)), "row")
    out = []
    for column in ("item_id", "category_id"):
        values = df[column].to_numpy()
        out.append([[values[r - 1] for r in w if r] for w in windows])
    return out[0], out[1]


def read_sequenced(root: Path) -> pd.DataFrame:
    frames = [pq.read_table(f).to_pandas() for f in sorted(root.glob("day=*/*.parquet"))]
    return pd.concat(frames, ignore_index=True)


def test_sequences_are_the_in_memory_windows(tmp_path: Path) -> None:
    df = busy_log()
    write_dataset(df, tmp_path / "log", files_per_day=2)
    result = sequence_log(tmp_path / "log", tmp_path / "seq", max_len=MAX_LEN)
    assert result.days_written == sorted(set((df["ts"] // 86_400).tolist()))
    assert result.rows_written == len(df)
    got = read_sequenced(tmp_path / "seq")
    items, cats = expected_windows(df, MAX_LEN)
    assert [list(x) for x in got[HIST_ITEM]] == items
    assert [list(x) for x in got[HIST_CATEGORY]] == cats
    lengths = np.array([len(x) for x in items])
    assert lengths.max() == MAX_LEN and (lengths == 0).any()  # windows fill, truncate, and start empty
    # Strictly before: a click never sees itself, nor a click in the same second.
    pd.testing.assert_frame_equal(got.drop(columns=[HIST_ITEM, HIST_CATEGORY]), read_log(tmp_path / "log"))
    # Still a log for every command that takes one: the list columns and _ files are ignored.
    pd.testing.assert_frame_equal(read_log(tmp_path / "seq"), df)
    assert is_sequenced(tmp_path / "seq") and not is_sequenced(tmp_path / "log")


def test_a_continuation_equals_sequencing_every_day_at_once(tmp_path: Path) -> None:
    df = busy_log(days=5)
    days = df["ts"] // 86_400
    write_dataset(df, tmp_path / "all")
    write_dataset(df[days < days.max()], tmp_path / "first")
    sequence_log(tmp_path / "all", tmp_path / "once", max_len=MAX_LEN)
    first = sequence_log(tmp_path / "first", tmp_path / "cont", max_len=MAX_LEN)
    assert len(first.days_written) == 4
    # The continuation: only the new day is sequenced, from the saved state.
    write_dataset(df[days == days.max()], tmp_path / "new")
    more = sequence_log(tmp_path / "new", tmp_path / "cont", max_len=MAX_LEN)
    assert more.days_written == [int(days.max())] and more.days_skipped == []
    for name in sorted(p.relative_to(tmp_path / "once") for p in (tmp_path / "once").glob("day=*/*.parquet")):
        assert pq.read_table(tmp_path / "cont" / name).equals(pq.read_table(tmp_path / "once" / name)), name
    assert pq.read_table(tmp_path / "cont" / STATE).equals(pq.read_table(tmp_path / "once" / STATE))
    meta = [json.loads((tmp_path / d / META).read_text()) for d in ("once", "cont")]
    assert meta[0]["days"] == meta[1]["days"] and meta[0]["rows"] == meta[1]["rows"]
    # Fed the whole log again, a continuation skips the days it holds.
    again = sequence_log(tmp_path / "all", tmp_path / "cont", max_len=MAX_LEN)
    assert again.days_written == [] and len(again.days_skipped) == 5


def test_string_ids_and_a_single_file(tmp_path: Path) -> None:
    df = busy_log(days=2)
    for column in ("user_id", "item_id", "category_id"):
        df[column] = "x" + df[column].astype(str)
    write_log(df, tmp_path / "log.parquet")
    sequence_log(tmp_path / "log.parquet", tmp_path / "seq", max_len=MAX_LEN)
    got = read_sequenced(tmp_path / "seq")
    items, _ = expected_windows(df, MAX_LEN)
    assert [list(x) for x in got[HIST_ITEM]] == items
    assert isinstance(got[HIST_ITEM].iloc[-1][0], str)


def test_the_cli_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = busy_log(days=2)
    write_dataset(df, tmp_path / "log")
    assert (
        main(["data", "sequences", str(tmp_path / "log"), "--out", str(tmp_path / "seq"), "--max-len", "5"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_written"] == len(df) and printed["max_len"] == 5
    with pytest.raises(InvalidArgument, match="sequenced with --max-len 5"):
        sequence_log(tmp_path / "log", tmp_path / "seq", max_len=6)
    with pytest.raises(InvalidArgument, match="not a sequenced dataset"):
        sequence_log(tmp_path / "log", tmp_path / "log" / "..", max_len=5)
    with pytest.raises(InvalidArgument, match="is the input log"):
        sequence_log(tmp_path / "log", tmp_path / "log", max_len=5)
    (tmp_path / "seq" / STATE).unlink()
    with pytest.raises(DataError, match=r"_state\.parquet is missing"):
        sequence_log(tmp_path / "log", tmp_path / "seq", max_len=5)
    assert main(["data", "sequences", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")]) == 2
    assert "no such file" in capsys.readouterr().err
