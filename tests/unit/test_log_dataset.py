"""Logs as datasets (issue 12 deliver 1): a directory of Parquet files, hive-partitioned by day, read
fragment by fragment, gives what the single file gives; a bad fragment is a one-line error naming the
fragment's file and the column."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from contract.log import DataError, read_log, write_dataset, write_log
from gkc import bundle as gkc_bundle
from tests.support.stage1_data import tiny_log
from trainer.cli import main
from trainer.data.synth import generate, write_world, write_world_partitioned
from trainer.export import export
from trainer.models.checkpoint import load_state
from trainer.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("worlds")
    write_world(generate("tiny", seed=3, progress=False), root / "files")
    write_world_partitioned("tiny", root / "parts", seed=3, progress=False)
    return root / "files", root / "parts"


def test_partitioned_world_equals_the_single_files(worlds: tuple[Path, Path]) -> None:
    files, parts = worlds
    days = sorted(p.name for p in (parts / "super").iterdir())
    assert days[0] == "day=2021-12-13" and len(days) == 7
    for name in ("super", "train"):
        pd.testing.assert_frame_equal(read_log(parts / name), read_log(files / f"{name}.parquet"))
    assert (parts / "test.parquet").read_bytes() == (files / "test.parquet").read_bytes()
    assert json.loads((parts / "truth.json").read_text()) == json.loads((files / "truth.json").read_text())


def test_data_check_on_a_dataset_equals_the_file(
    worlds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files, parts = worlds
    summaries = []
    for path in (files / "super.parquet", parts / "super"):
        assert main(["data", "check", str(path)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary.pop("file") == str(path)
        summaries.append(summary)
    assert summaries[0] == summaries[1]
    assert summaries[0]["days"] == 7 and summaries[0]["rows"] > 50_000


def test_several_files_per_day_and_non_partitioned_directories(tmp_path: Path) -> None:
    df = tiny_log(days=3, rows_per_day=400)
    write_dataset(df, tmp_path / "parts", files_per_day=3)
    pd.testing.assert_frame_equal(read_log(tmp_path / "parts"), read_log(write_log(df, tmp_path / "a.pq")))
    flat = tmp_path / "flat"  # plain files, no partitions: path order
    write_log(df.iloc[:500], flat / "a.parquet")
    write_log(df.iloc[500:], flat / "b.parquet")
    (flat / "_SUCCESS").write_text("")  # writer markers are skipped, as pyarrow.dataset does
    back = read_log(flat, columns=["user_id", "ts", "click"])
    assert list(back.columns) == ["user_id", "ts", "click"]
    assert back["user_id"].tolist() == df["user_id"].tolist()


def _dataset(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "log"
    return root, write_dataset(tiny_log(days=3, rows_per_day=300), root)


def _drop(column: str) -> Callable[[Path], None]:
    def bad(path: Path) -> None:
        pq.write_table(pq.read_table(path).drop_columns([column]), path)

    return bad


def _set(column: str, values: Callable[[pa.Table], object]) -> Callable[[Path], None]:
    def bad(path: Path) -> None:
        table = pq.read_table(path)
        i = table.schema.get_field_index(column)
        pq.write_table(table.set_column(i, column, pa.array(values(table))), path)

    return bad


@pytest.mark.parametrize(
    ("corrupt", "column", "words"),
    [
        (_drop("category_id"), "category_id", "missing"),
        (_drop("cart"), "cart", "missing here but present"),
        (_set("click", lambda t: np.full(t.num_rows, 3, np.int8)), "click", "0/1"),
        (_set("ts", lambda t: t["ts"].to_numpy() + 86_400), "ts", "outside its partition day="),
        (
            _set("user_id", lambda t: ["u" + str(v) for v in t["user_id"].to_pylist()]),
            "user_id",
            "string ids",
        ),
    ],
)
def test_a_bad_fragment_is_a_one_line_error_naming_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt, column: str, words: str
) -> None:
    root, files = _dataset(tmp_path)
    corrupt(files[1])
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("keep: error: ")
    assert str(files[1]) in err and f"'{column}'" in err and words in err
    with pytest.raises(DataError, match=str(files[1])):
        read_log(root)


def test_unreadable_fragments_partitions_and_directories(tmp_path: Path) -> None:
    root, files = _dataset(tmp_path)
    files[2].write_bytes(b"not parquet")
    with pytest.raises(DataError, match=rf"{files[2]}: cannot be read as parquet"):
        read_log(root)
    files[2].write_bytes(b"")
    with pytest.raises(DataError, match=rf"{files[2]}: file is empty"):
        read_log(root)
    files[2].unlink()
    bad_day = root / "day=2021-02-30" / "part-0.parquet"
    bad_day.parent.mkdir()
    bad_day.write_bytes(files[0].read_bytes())
    with pytest.raises(DataError, match=r"partition 'day=2021-02-30' is not a day=YYYY-MM-DD date"):
        read_log(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet files"):
        read_log(tmp_path / "empty")


def test_pretrain_and_export_read_a_dataset_like_the_file(tmp_path: Path) -> None:
    """``keep pretrain --super DIR`` trains the parameters ``--super FILE`` trains; the export of each
    from its own source holds the same entries."""
    df = tiny_log(users=30, items=40, categories=5, days=3, rows_per_day=600)
    file = write_log(df, tmp_path / "super.parquet")
    write_dataset(df, tmp_path / "super", files_per_day=2)
    bundles = []
    for name, source in (("file", file), ("dir", tmp_path / "super")):
        out = tmp_path / f"ckpt-{name}"
        config = PretrainConfig(
            super_path=source, out=out, strategy="serving", batch_size=300, progress=False
        )
        pretrain(config)
        bundles.append(gkc_bundle.load(export(out, tmp_path / f"bundle-{name}", progress=False)[0]))
    a, b = (load_state(tmp_path / f"ckpt-{n}") for n in ("file", "dir"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for field in ("user_ids", "item_ids", "uc_user_ids", "uc_category_ids", "user_vectors", "uc_vectors"):
        np.testing.assert_array_equal(getattr(bundles[0], field), getattr(bundles[1], field), err_msg=field)


def test_train_and_evaluate_read_datasets_like_files(
    worlds: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, parts = worlds
    results = []
    for name, train in (("file", files / "train.parquet"), ("dir", parts / "train")):
        model = tmp_path / name
        common = ["--no-progress", "--threads", "1"]
        assert main(["train", "--train", str(train), "--out", str(model), "--no-knowledge", *common]) == 0
        capsys.readouterr()
        test = ["--test", str(files / "test.parquet"), "--train", str(train)]
        assert main(["evaluate", "--model", str(model), *test, *common]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["gauc"] > 0.5
