"""Model directory layouts, hot reload with atomic swaps, and what happens to broken artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import ranker_world
from ranker.history import EMPTY_HISTORY
from ranker.registry import ModelRegistry
from services.errors import NotFound


@pytest.fixture(scope="module")
def log() -> dict:
    return ranker_world.make_log(users=10, items=50, categories=5, rows_per_user=10)


def test_single_artifact_dir_is_named_after_its_task(tmp_path: Path, log: dict) -> None:
    ranker_world.make_artifact(tmp_path / "model-v3", log, None, 0, task="cart", mlp=(16, 8))
    os.symlink("model-v3", tmp_path / "current")
    registry = ModelRegistry(tmp_path / "current")
    assert registry.reload()["loaded"] == ["cart"]
    assert registry.get().name == "cart" and registry.get("cart").path == (tmp_path / "model-v3").resolve()


def test_directory_of_models_and_default_choice(tmp_path: Path, log: dict) -> None:
    for name, task in (("cvr", "conversion"), ("ctr", "click"), (".hidden", "click"), ("x.tmp-1", "click")):
        ranker_world.make_artifact(tmp_path / name, log, None, 0, task=task, mlp=(16, 8))
    registry = ModelRegistry(tmp_path)
    assert registry.reload()["models"] == ["ctr", "cvr"]
    assert registry.default_name() == "ctr"  # first in order when none is configured and none is "click"
    assert ModelRegistry(tmp_path, default_model="cvr").default_name() == "cvr"
    with pytest.raises(NotFound, match="unknown model"):
        registry.get("cart")
    with pytest.raises(NotFound, match="no model is loaded"):
        ModelRegistry(tmp_path / "empty").get()


def test_symlink_flip_swaps_and_old_snapshot_stays_usable(tmp_path: Path, log: dict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    ranker_world.make_artifact(tmp_path / "a", log, None, 0, seed=1, mlp=(16, 8))
    ranker_world.make_artifact(tmp_path / "b", log, None, 0, seed=2, mlp=(16, 8))
    os.symlink(tmp_path / "a", models / "ctr")
    registry = ModelRegistry(models)
    registry.reload()
    old = registry.get("ctr")
    assert registry.reload()["unchanged"] == ["ctr"] and registry.get("ctr") is old
    os.symlink(tmp_path / "b", models / ".ctr.new")
    os.replace(models / ".ctr.new", models / "ctr")
    assert registry.reload()["loaded"] == ["ctr"]
    new = registry.get("ctr")
    assert new.revision != old.revision and new.path.name == "b"
    enc = old.scorer.encode("u1", EMPTY_HISTORY, ["i1", "i2"], ["c1", "c2"], [])
    assert old.scorer.score(enc, None).tolist() != new.scorer.score(enc, None).tolist()


def test_broken_artifact_keeps_the_old_model_and_vanished_needs_two_scans(tmp_path: Path, log: dict) -> None:
    path = ranker_world.make_artifact(tmp_path / "ctr", log, None, 0, mlp=(16, 8))
    loads: list[str] = []
    registry = ModelRegistry(tmp_path, on_load=loads.append)
    registry.reload()
    before = registry.get("ctr")
    (path / "state.pt").write_bytes(b"garbage")
    report = registry.reload()
    assert "ctr" in report["failed"] and registry.get("ctr") is before
    registry.reload()  # the same broken files: not retried loudly
    assert loads == ["loaded", "failed"]
    for f in path.iterdir():
        f.unlink()
    path.rmdir()
    assert registry.reload()["models"] == ["ctr"]  # first miss: maybe an in-place rewrite
    assert registry.reload()["removed"] == ["ctr"]
    with pytest.raises(NotFound):
        registry.get("ctr")
