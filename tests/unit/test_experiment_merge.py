"""``keep experiment-merge``: several runs of the same data become one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main


def _run(root: Path, name: str, methods: dict[str, list[float]], wall: float, **overrides: object) -> Path:
    """A results.json as ``keep experiment`` writes it (the fields the merge and the report read)."""
    out = root / name
    out.mkdir()
    labels = ["0-5", "5-9", "9-16", ">=16"]
    result = {
        "dataset": {"super": {"rows": 10, "users": 2}, "train": {"rows": 5, "users": 2},
                    "test": {"rows": 4, "users": 2}, "files": {}},
        "seeds": 2,
        "setup": {"max_epochs": 3},
        "oracle": {"gauc": 0.8, "world": "paper", "truth": "t.json", "synth_seed": 0},
        "group_edges": {"labels": labels, "rule": "test-impression quartiles", "edges": [5, 9, 16]},
        "group_edges_sub": {"labels": labels},
        "methods": {
            m: {"gauc": {"mean": sum(v) / 2, "std": 0.0, "runs": v},
                "auc": {"mean": sum(v) / 2, "std": 0.0, "runs": v}, "epochs": [1, 2], "seconds": 1.0}
            for m, v in methods.items()
        },
        "groups": {m: {g: v[0] for g in labels} for m, v in methods.items()},
        "groups_sub": {m: {g: v[0] for g in labels} for m, v in methods.items()},
        "extractor": {},
        "pretrain_seconds": {f"pretrain_{name}": wall},
        "wall_seconds": wall,
        **overrides,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(result))
    return out


def test_runs_of_the_same_data_merge_into_one_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path, "a", {"base": [0.60, 0.62], "keep": [0.63, 0.64]}, wall=100.0)
    b = _run(tmp_path, "b", {"base": [0.60, 0.62], "conet": [0.61, 0.61]}, wall=300.0)
    out = tmp_path / "merged"
    assert main(["experiment-merge", str(a), str(b), "--out", str(out)]) == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert set(result["methods"]) == {"base", "keep", "conet"}
    assert result["stats"]["gauc"]["conet"]["lifts"] == pytest.approx([0.01, -0.01])
    assert result["stats"]["gauc"]["keep"]["lifts"] == pytest.approx([0.03, 0.02])
    assert result["wall_seconds"] == 300.0 and [m["run"] for m in result["merged_from"]] == [str(a), str(b)]
    assert set(result["pretrain_seconds"]) == {"pretrain_a", "pretrain_b"}
    report = (out / "report.md").read_text()
    assert "| conet |" in report and "| keep |" in report and "to oracle" in report


def test_runs_that_disagree_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "a", {"base": [0.60, 0.62]}, wall=1.0)
    other_base = _run(tmp_path, "b", {"base": [0.61, 0.62]}, wall=1.0)
    assert main(["experiment-merge", str(a), str(other_base), "--out", str(tmp_path / "m1")]) == 2
    assert "base: per-seed GAUC" in capsys.readouterr().err
    other_data = _run(tmp_path, "c", {"keep": [0.6, 0.6]}, wall=1.0, seeds=3)
    assert main(["experiment-merge", str(a), str(other_data), "--out", str(tmp_path / "m2")]) == 2
    assert "'seeds' differs" in capsys.readouterr().err
    assert main(["experiment-merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "m3")]) == 2
    assert "no results.json" in capsys.readouterr().err
