"""The pipeline API (:mod:`trainer.pipeline`): typed configs in, summaries out, user errors refused.

Issue 18: ``keep pretrain`` then ``keep export``, the pipeline's own order, failed ("trained with
--strategy full; export needs the serving forms"); the default is now the serving form, and this test
runs that order through the API the CLI calls (the README's commands run it through the CLI, slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gkc.bundle_reader import BundleReader
from services.errors import InvalidArgument
from tests.support.stage1_data import write_tiny
from trainer import pipeline
from trainer.models.checkpoint import load_extractor


def test_pretrain_then_export_in_the_pipelines_own_order(tmp_path: Path) -> None:
    log = write_tiny(tmp_path / "super.parquet", users=30, items=40, categories=5, days=3, rows_per_day=600)
    config = pipeline.PretrainConfig(super_path=log, out=tmp_path / "ext", batch_size=300, progress=False)
    first = pipeline.pretrain(config)
    assert load_extractor(tmp_path / "ext").model.cfg.strategy == "serving"
    assert "already_done" not in first
    again = pipeline.pretrain(config)  # a rerun of a finished run reports it and trains nothing
    assert again["already_done"] is True and again["window"] == first["window"]
    summary = pipeline.export(pipeline.ExportConfig(extractor=tmp_path / "ext", out=tmp_path / "bundle"))
    assert summary["bundle"] == str(tmp_path / "bundle") and summary["users"] > 0
    reader = BundleReader.open(tmp_path / "bundle")
    assert reader.manifest.strategy == "serving"


def test_export_needs_exactly_one_destination(tmp_path: Path) -> None:
    for out, url in ((None, None), (tmp_path / "b", "redis://127.0.0.1:1/0")):
        with pytest.raises(InvalidArgument, match="--out DIR"):
            pipeline.export(pipeline.ExportConfig(extractor=tmp_path, out=out, gkc_redis=url))


def test_each_gkc_address_goes_to_its_own_flag() -> None:
    with pytest.raises(InvalidArgument, match="--gkc-api"):
        pipeline.KnowledgeSource(gkc="http://127.0.0.1:8081").open(0)
    with pytest.raises(InvalidArgument, match="not both"):
        pipeline.KnowledgeSource(gkc="127.0.0.1:50051", bundle=Path("b")).open(0)
    assert pipeline.KnowledgeSource().open(0) is None
    with pytest.raises(InvalidArgument, match="REST URL"):
        pipeline.publish(pipeline.PublishConfig(Path("b"), api_url="127.0.0.1:50051"))


def test_a_publish_says_whether_readers_see_the_new_version() -> None:
    assert "ready and active" in pipeline.PublishOutcome(1, True, ()).describe()
    later = pipeline.PublishOutcome(4, False, (1,)).describe()
    assert "keep versions activate 4" in later and "retired [1]" in later
