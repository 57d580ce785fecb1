"""``keep experiment``: writes results.json, report.md and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.data.synth import generate, write_world
from trainer.experiment_methods import METHOD_NAMES
from trainer.report import user_groups


def _world(root: Path, scale: str) -> Path:
    write_world(generate(scale, seed=1, progress=False), root / "data")
    return root / "data"


def _check_outputs(out: Path, methods: list[str], seeds: int) -> dict:
    result = json.loads((out / "results.json").read_text())
    assert set(result) >= {"dataset", "methods", "groups"}
    assert set(result["methods"]) == set(methods)
    for name in methods:
        m = result["methods"][name]
        assert len(m["gauc"]["runs"]) == seeds and len(m["auc"]["runs"]) == seeds
        assert 0.0 < m["gauc"]["mean"] < 1.0 and m["gauc"]["std"] >= 0.0
        assert set(result["groups"][name]) == set(result["group_edges"]["labels"])
    report = (out / "report.md").read_text()
    for name in methods:
        assert f"| {name} |" in report
    for png in ("gauc_by_method.png", "gauc_lift_by_group.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


def test_experiment_on_tiny_writes_the_three_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _world(tmp_path, "tiny")
    out = tmp_path / "exp"
    code = main(
        [
            "experiment", "--super", str(data / "super.parquet"), "--train", str(data / "train.parquet"),
            "--test", str(data / "test.parquet"), "--out", str(out), "--methods", "base,keep_ku",
            "--seeds", "2", "--max-epochs", "2", "--reuse-extractors", "--no-progress", "--threads", "1",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[seed 2/2] keep_ku" in captured.err  # progress per method
    result = _check_outputs(out, ["base", "keep_ku"], seeds=2)
    assert result["dataset"]["train"]["rows"] > 0
    assert "Table 2" in (out / "report.md").read_text()
    # Issue 14: the extractor's held-out metrics per seed, never an empty metrics.json ...
    runs = result["extractor"]["full"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert r["held_out"]["click"]["gauc"] is not None and r["held_out"]["click"]["auc"] is not None
        assert r["passes"]["passes"] >= 1 and r["sub_domain_validation"]["click"]["rows"] > 0
    metrics = json.loads((out / "work" / "seed0" / "extractor_full" / "metrics.json").read_text())
    assert metrics["validation"]["click"]["gauc"] == runs[0]["held_out"]["click"]["gauc"]
    # ... and each method's lift over base, paired by seed.
    lift = result["stats"]["gauc"]["keep_ku"]
    base, keep_ku = result["methods"]["base"]["gauc"]["runs"], result["methods"]["keep_ku"]["gauc"]["runs"]
    assert lift["lifts"] == pytest.approx([k - b for k, b in zip(keep_ku, base, strict=True)])
    assert 0.0 <= lift["t_test_p"] <= 1.0 or lift["t_test_p"] is None
    report = (out / "report.md").read_text()
    assert "## Lift over base, paired by seed" in report and "## Extractors" in report
    # Issue 14: the ceiling. truth.json's true click model scores the test day above every method.
    truth = json.loads((data / "truth.json").read_text())
    oracle = result["oracle"]
    assert oracle["gauc"] == truth["oracle_test_gauc"]["true_logit"] and oracle["world"] == truth["world"]
    for name, m in result["methods"].items():
        assert max(m["gauc"]["runs"]) < oracle["gauc"], name
    assert "to oracle" in report and f"| oracle (true click model) | {oracle['gauc']:.4f} |" in report


def test_oracle_is_read_only_from_the_test_logs_own_world(tmp_path: Path) -> None:
    from trainer.data.synth_truth import read_oracle

    data = _world(tmp_path, "tiny")
    truth = json.loads((data / "truth.json").read_text())
    rows = truth["sizes"]["test"]["rows"]
    oracle = read_oracle(data / "test.parquet", rows)
    assert oracle is not None and oracle["gauc"] == truth["oracle_test_gauc"]["true_logit"]
    # Another log beside this truth.json (other rows), or no truth.json at all: no oracle.
    assert read_oracle(data / "test.parquet", rows + 1) is None
    assert read_oracle(tmp_path / "elsewhere" / "test.parquet", rows) is None
    (data / "truth.json").write_text("{not json")
    assert read_oracle(data / "test.parquet", rows) is None


def test_unknown_method_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _world(tmp_path, "tiny")
    code = main(
        [
            "experiment", "--super", str(data / "super.parquet"), "--train", str(data / "train.parquet"),
            "--test", str(data / "test.parquet"), "--out", str(tmp_path / "x"), "--methods", "base,nosuch",
        ]
    )  # fmt: skip
    assert code == 2 and "nosuch" in capsys.readouterr().err


def test_groups_keep_paper_edges_when_they_fit_and_use_weighted_quartiles_when_not() -> None:
    import numpy as np
    import pandas as pd

    heavy = pd.DataFrame({"user_id": np.repeat([1, 2, 3, 4], [10, 80, 200, 400]), "click": 1})
    mapping, info = user_groups(heavy, np.array([1, 2, 3, 4, 5]))
    assert info["rule"] == "paper" and info["edges"] == [50, 150, 300]
    assert [mapping[str(u)] for u in (1, 2, 3, 4, 5)] == ["0-50", "50-150", "150-300", ">300", "0-50"]
    # Light users: the paper's edges would put everyone in the first group. Eight users with 0..7
    # clicks; users 6 and 7 have most of the test rows, so the weighted quartiles sit high.
    light = pd.DataFrame({"user_id": np.repeat(np.arange(8), np.arange(8)), "click": 1})
    test_rows = np.repeat(np.arange(8), [1, 1, 1, 1, 1, 1, 6, 8])
    mapping, info = user_groups(light, test_rows)
    assert info["rule"] != "paper"
    assert info["edges"] == [5, 6, 7]
    assert [mapping[str(u)] for u in range(8)] == ["0-5"] * 5 + ["5-6", "6-7", ">=7"]
    assert info["impression_share"] == {"0-5": 0.25, "5-6": 0.05, "6-7": 0.3, ">=7": 0.4}
    assert sum(info["users"].values()) == 8


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every method incl. the four Table 2 baselines: ~12 min on 2 cores
def test_all_methods_on_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _world(tmp_path, "small")
    out = tmp_path / "exp"
    code = main(
        [
            "experiment", "--super", str(data / "super.parquet"), "--train", str(data / "train.parquet"),
            "--test", str(data / "test.parquet"), "--out", str(out), "--seeds", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _check_outputs(out, list(METHOD_NAMES), seeds=1)


def test_stored_dtype_methods_read_the_same_export_quantized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keep_fp16`` / ``keep_int8`` (issue 13): the serving export stored at float16 / int8, read through
    the bundle reader; the knowledge differs from float32 by at most the dtype's bound."""
    from gkc import bundle as gkc_bundle

    data = _world(tmp_path, "tiny")
    out = tmp_path / "exp"
    methods = "keep_decomposition_degeneration,keep_fp16,keep_int8"
    code = main(
        [
            "experiment", "--super", str(data / "super.parquet"), "--train", str(data / "train.parquet"),
            "--test", str(data / "test.parquet"), "--out", str(out), "--methods", methods,
            "--seeds", "1", "--max-epochs", "1", "--reuse-extractors", "--no-progress", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _check_outputs(out, methods.split(","), seeds=1)
    bundles = {p.name: p for p in out.rglob("bundle_serving*") if (p / "manifest.json").is_file()}
    assert set(bundles) == {"bundle_serving", "bundle_serving_float16", "bundle_serving_int8"}
    full = gkc_bundle.load(bundles["bundle_serving"])
    for name, dtype in (("bundle_serving_float16", "float16"), ("bundle_serving_int8", "int8")):
        stored = gkc_bundle.load(bundles[name])
        assert stored.manifest.dtype == dtype and stored.uc_vectors.dtype.itemsize < 4
        err = abs(stored.dequantized("ucs") - full.uc_vectors)
        assert 0 < float(err.max()) <= float(abs(full.uc_vectors).max()) / 200
