"""The extractor learns more than popularity on the synthetic world's ``small`` scale (slow: ~40 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data.readers import write_log
from trainer.data.synth import generate
from trainer.pretrain import PretrainConfig, pretrain


@pytest.mark.slow
def test_click_gauc_on_the_held_out_super_day_beats_popularity(tmp_path: Path) -> None:
    world = generate("small", seed=0, progress=False)
    path = write_log(world.super, tmp_path / "super.parquet")
    result = pretrain(PretrainConfig(super_path=path, out=tmp_path / "ext", progress=False))
    click = result.metrics["click"]
    assert click["gauc"] > 0.6
    assert click["gauc"] > click["gauc_popularity"] + 0.03
