"""The extractors learn more than popularity on the synthetic world's ``small`` scale (slow: ~40 s each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.log import write_log
from trainer.data.synth import generate
from trainer.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def small_super(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = generate("small", seed=0, world="easy", progress=False)  # the thresholds were measured on it
    return write_log(world.super, tmp_path_factory.mktemp("small") / "super.parquet")


@pytest.mark.slow
def test_click_gauc_on_the_held_out_super_day_beats_popularity(small_super: Path, tmp_path: Path) -> None:
    result = pretrain(
        PretrainConfig(super_path=small_super, out=tmp_path / "ext", strategy="full", progress=False)
    )
    click = result.metrics["click"]
    assert click["gauc"] > 0.6
    assert click["gauc"] > click["gauc_popularity"] + 0.03


@pytest.mark.slow
def test_two_tower_decomposition_learns_interests_not_just_popularity(
    small_super: Path, tmp_path: Path
) -> None:
    # The towers meet only through K̂_u ⊙ K̂_i; without their layer norms one pass learned little
    # beyond popularity (held-out GAUC 0.618 vs 0.612), and keep_decomposition equalled base.
    cfg = PretrainConfig(
        super_path=small_super,
        out=tmp_path / "ext",
        strategy="decomposition",
        tasks=("click",),
        progress=False,
    )
    click = pretrain(cfg).metrics["click"]
    assert click["gauc"] > click["gauc_popularity"] + 0.05
