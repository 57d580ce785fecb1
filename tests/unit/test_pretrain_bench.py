"""``keep bench train --quick`` prints one JSON object with both throughputs and their ratio."""

from __future__ import annotations

import json

import pytest

from trainer.cli import main


def test_bench_train_quick_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--quick"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # nothing else on stdout (DeepCTR-Torch's version check stays silent)
    result = json.loads(out[0])
    assert result["ours_samples_per_s"] > 0
    assert result["ours_multitask_samples_per_s"] > 0
    assert 0 < result["peak_rss_train_gib"] < 3
    assert result["export"]["users"] > 0 and result["export_users_per_s"] > 0
    if result["deepctr_samples_per_s"] is None:  # deepctr-torch not installed: said so, no crash
        assert "not installed" in result["runs"]["deepctr"]["error"]
    else:
        ratio = result["ours_samples_per_s"] / result["deepctr_samples_per_s"]
        assert result["ratio"] == pytest.approx(ratio, rel=0.01)
