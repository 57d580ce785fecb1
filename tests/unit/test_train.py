"""``keep train`` / ``keep evaluate``: base and plug-in models, warm start, knowledge pinning."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from contract import artifact as artifact_mod
from contract.ids import Vocabs
from contract.knowledge import GKC_BLOCKS
from contract.log import write_log
from contract.schema import day_of
from tests.support.stage2_data import random_bundle
from trainer.cli import main
from trainer.data.synth import generate
from trainer.train import EMBEDDING_VOCAB, TrainConfig, prepare_model, train


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    w = generate("tiny", seed=3, progress=False)
    files = {name: write_log(getattr(w, name), root / f"{name}.parquet") for name in ("train", "test")}
    for dim, name in ((8, "bundle"), (6, "bundle_other")):
        files[name] = random_bundle(pd.concat([w.train, w.test]), root / name, dim, seed=dim)
    return files


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*argv, "--no-progress", "--threads", "1"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_base_then_plugged_warm_start_then_evaluate(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, plugged = tmp_path / "base", tmp_path / "plugged"
    code, out, err = _run(
        ["train", "--train", str(world["train"]), "--out", str(base), "--no-knowledge"], capsys
    )
    assert code == 0, err
    argv = ["train", "--train", str(world["train"]), "--out", str(plugged), "--bundle", str(world["bundle"])]
    code, out, err = _run([*argv, "--knowledge-version", "3", "--init", str(base)], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["warm_start"] is True and info["knowledge"]["gkc"]["version"] == 3
    art = artifact_mod.load(plugged)
    assert [n for n, _ in art.knowledge["gkc"].schema.blocks] == list(GKC_BLOCKS)
    assert art.config.plugins == {"gkc": 8 * 3 + 4}

    ev = ["evaluate", "--model", str(plugged), "--test", str(world["test"]), "--train", str(world["train"])]
    code, out, err = _run([*ev, "--bundle", str(world["bundle"])], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"gauc", "auc", "rows", "users", "coverage"}
    assert 0.0 < result["gauc"] < 1.0 and result["rows"] == len(pd.read_parquet(world["test"]))

    code, out, err = _run([*ev, "--bundle", str(world["bundle_other"])], capsys)
    assert code == 2 and "schema mismatch" in err and out == ""
    code, out, err = _run(ev, capsys)
    assert code == 2 and "needs knowledge" in err


def test_cli_refuses_bad_input(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["train", "--train", str(world["train"]), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "--gkc" in err
    code, _, err = _run(
        ["train", "--train", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "m"), "--no-knowledge"],
        capsys,
    )
    assert code == 2 and "nope.parquet" in err
    code, _, err = _run(["evaluate", "--model", str(tmp_path), "--test", str(world["test"])], capsys)
    assert code == 2 and "not a model artifact" in err


def test_warm_start_with_new_ids_keeps_every_old_row(world: dict[str, Path]) -> None:
    """Day-by-day: yesterday's model loads into today's, vocabularies grow, old rows keep their values."""
    df = pd.read_parquet(world["train"])
    days = day_of(df["ts"].to_numpy())
    day1 = df[days == days.min()].reset_index(drop=True)
    day2 = df[days == days.max()].reset_index(drop=True)
    cfg = TrainConfig(progress=False, mlp=(16, 8))
    yesterday = train(day1, cfg)
    old = yesterday.vocabs
    new = Vocabs.build(day2, init=old)
    assert len(new.item) > len(old.item)  # day 2 brings ids day 1 never saw
    model, fresh = prepare_model(new, cfg, (), yesterday)
    assert fresh == []
    state = model.state_dict()
    for key, value in yesterday.state.items():
        if key in EMBEDDING_VOCAB:
            vocab_old, vocab_new = getattr(old, EMBEDDING_VOCAB[key]), getattr(new, EMBEDDING_VOCAB[key])
            rows = torch.from_numpy(vocab_new.lookup(vocab_old.keys))
            assert torch.equal(state[key][rows], value[2 : 2 + len(vocab_old.keys)]), key
            assert torch.equal(state[key][:2], value[:2])
        else:
            assert torch.equal(state[key], value), key
    today = train(day2, cfg, init=yesterday)
    assert today.training.warm_start is True
    assert not torch.equal(today.state["over.logit.weight"], yesterday.state["over.logit.weight"])


def test_conversion_task_learns_from_clicked_rows(world: dict[str, Path]) -> None:
    df = pd.read_parquet(world["train"])
    art = train(df, TrainConfig(task="conversion", progress=False, mlp=(16, 8)))
    assert art.task == "conversion" and art.training.rows == int(df["click"].sum())
