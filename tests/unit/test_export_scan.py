"""``keep export`` streams its log (issue 12, item 5): the digest of a log read in batches is the digest of
the whole log in memory, and the streamed export is the in-memory export byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.log import read_log, write_dataset, write_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from tests.support.stage1_data import EXPORT_SIZE, pretrained_serving, write_tiny
from trainer.export import export, export_loaded
from trainer.export_scan import LogDigest
from trainer.models.checkpoint import load_extractor


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pretrained_serving(tmp_path_factory.mktemp("export_scan"))


def _equal(a: LogDigest, b: LogDigest) -> None:
    for name in ("clicks", "pairs", "items"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)


@pytest.mark.parametrize("layout", ["file", "dataset", "no_shops"])
def test_digest_of_batches_is_the_digest_of_the_whole_log(tmp_path: Path, layout: str) -> None:
    """``no_shops``: a log without the optional ``shop_id`` (the Taobao behaviour data) was refused
    ("column 'shop_id' is missing") by the streamed export's reader."""
    path = write_tiny(tmp_path / "super.parquet", **EXPORT_SIZE)
    df = read_log(path)
    if layout == "no_shops":
        df = df.drop(columns="shop_id")
        path = write_log(df, tmp_path / "no_shops.parquet")
    last_day = int(day_of(df["ts"].to_numpy()).max()) - 1  # the held-out day is outside the window
    source = tmp_path / "ds" if layout == "dataset" else path
    if layout == "dataset":
        write_dataset(df, source, files_per_day=2)
    whole = LogDigest.of([read_log(source)], last_day)
    # 97-row batches and a compaction after every few of them: the de-duplication across batches runs
    streamed = LogDigest.scan(source, last_day, batch_rows=97)
    compacted = LogDigest.of(
        (df.iloc[i : i + 101] for i in range(0, len(df), 101)), last_day, compact_rows=50
    )
    _equal(whole, streamed)
    _equal(LogDigest.of([df], last_day), compacted)
    # and it is what the export needs: only clicks, only the window, every pair and item once
    assert (whole.clicks["ts"] // 86400 <= last_day).all() and len(whole.clicks) < len(df) / 2
    window = df[day_of(df["ts"].to_numpy()) <= last_day]
    assert len(whole.clicks) == int(window["click"].sum())
    assert len(whole.pairs) == len(window[["user_id", "category_id"]].drop_duplicates())
    assert whole.items["item_id"].is_unique and len(whole.items) == window["item_id"].nunique()
    last = window.drop_duplicates("item_id", keep="last").set_index("item_id")["category_id"]
    assert (whole.items.set_index("item_id")["category_id"] == last.loc[whole.items["item_id"]]).all()


def test_streamed_export_is_the_in_memory_export_byte_for_byte(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    super_path, ckpt = trained
    streamed, _ = export(ckpt, tmp_path / "streamed", progress=False, scan_batch_rows=97)
    in_memory, _ = export_loaded(
        load_extractor(ckpt), read_log(super_path), tmp_path / "in_memory", source=super_path, progress=False
    )
    a, b = gkc_bundle.load(streamed), gkc_bundle.load(in_memory)
    assert (a.manifest.counts, a.manifest.dims) == (b.manifest.counts, b.manifest.dims)
    for name in ("user_ids", "item_ids", "uc_user_ids", "uc_category_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("user_vectors", "item_vectors", "uc_vectors"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert len(a.uc_vectors) > 0 and len(np.unique(a.item_vectors, axis=0)) > 1
