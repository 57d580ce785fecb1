"""Pre-training's number of passes: early stopping on a held-out super-domain day, one pass on large
data; ``metrics.json`` always carries per-task held-out metrics (issue 14, deliver 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.stage1_data import write_tiny
from trainer.cli import main
from trainer.pretrain import PretrainConfig, pretrain
from trainer.pretrain_passes import best_pass, stopped

SMALL = {"users": 30, "items": 40, "categories": 5, "days": 5, "rows_per_day": 1200}


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("passes") / "super.parquet", **SMALL)


def test_best_pass_and_plateau_rule() -> None:
    curve = [0.60, 0.65, 0.6505, 0.649]
    assert best_pass(curve, min_delta=0.001) == 2  # +0.0005 is not a gain
    assert best_pass(curve, min_delta=0.0) == 3
    assert stopped(curve, patience=2, min_delta=0.001)
    assert not stopped(curve[:3], patience=2, min_delta=0.001)
    assert not stopped([0.6, 0.61, 0.62], patience=1, min_delta=0.001)
    assert best_pass([float("nan"), 0.55], min_delta=0.001) == 2


def test_early_stopping_stops_on_a_validation_plateau(log_file: Path, tmp_path: Path) -> None:
    """lr = 0: the validation GAUC cannot move, so the search stops after 1 + patience passes (not at
    the budget) and keeps one pass."""
    cfg = PretrainConfig(
        super_path=log_file, out=tmp_path / "flat", lr=0.0, batch_size=500, progress=False, max_passes=6
    )
    metrics = pretrain(cfg).metrics
    plan = metrics["passes"]
    assert len(plan["curve"]) == 1 + cfg.patience < cfg.max_passes
    assert plan["passes"] == 1 and "plateau" in plan["rule"]
    assert json.loads((tmp_path / "flat" / "progress.json").read_text())["passes"] == 1


@pytest.mark.slow
def test_small_data_trains_more_passes_and_learns_more(log_file: Path, tmp_path: Path) -> None:
    """Before this, a small super-domain got one pass (here 12 Adam steps) whatever its size."""
    one = pretrain(
        PretrainConfig(super_path=log_file, out=tmp_path / "one", batch_size=2000, passes=1, progress=False)
    )
    auto = pretrain(
        PretrainConfig(super_path=log_file, out=tmp_path / "auto", batch_size=2000, progress=False)
    )
    plan = auto.metrics["passes"]
    assert plan["passes"] > 1 and "early stopping" in plan["rule"]
    assert len(plan["curve"]) >= plan["passes"]
    assert auto.batches == plan["passes"] * one.batches
    # The held-out day (not the validation day) scores better after the chosen passes.
    assert auto.metrics["click"]["gauc"] > one.metrics["click"]["gauc"] + 0.02
    for task in ("click", "conversion", "cart"):
        assert {"gauc", "auc", "rows"} <= set(auto.metrics["validation"][task])


def test_large_data_keeps_the_papers_single_pass(log_file: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(super_path=log_file, out=tmp_path / "big", one_pass_rows=1000, progress=False)
    metrics = pretrain(cfg).metrics
    assert metrics["passes"]["passes"] == 1 and metrics["passes"]["rule"].startswith("large data")
    assert "validation" not in metrics
    assert metrics["click"]["gauc"] is not None and metrics["click"]["auc"] is not None


def test_metrics_json_has_held_out_metrics_without_holdout_days(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keep experiment`` pre-trains with --holdout-days 0: metrics.json used to be ``{}``."""
    out = tmp_path / "all"
    code = main(
        [
            "pretrain", "--super", str(log_file), "--out", str(out), "--holdout-days", "0",
            "--batch-size", "1000", "--max-passes", "3", "--threads", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"] == metrics
    assert metrics["validation"]["click"]["gauc"] > 0.5
    assert 1 <= metrics["passes"]["passes"] <= 3


def test_bad_passes_arguments_are_one_line_errors(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag, value in (("--passes", "-1"), ("--max-passes", "0"), ("--patience", "0")):
        code = main(["pretrain", "--super", str(log_file), "--out", str(tmp_path / "x"), flag, value])
        assert code == 2 and flag in capsys.readouterr().err
