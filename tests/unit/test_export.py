"""``keep export``: bundle contents, manifest, consistency with the offline knowledge function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.ids import RESERVED
from contract.log import read_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from gkc.bundle_writer import BundleWriter
from services.errors import InvalidArgument
from tests.support.stage1_data import DAY, EXPORT_SIZE, pretrained_serving, write_tiny
from trainer.cli import main
from trainer.export import export, export_loaded, prepare, user_filter
from trainer.export_scan import LogDigest
from trainer.knowledge_fn import KnowledgeFn
from trainer.models.checkpoint import LoadedExtractor, load_extractor
from trainer.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pretrained_serving(tmp_path_factory.mktemp("export"))


def test_bundle_manifest_matches_its_arrays(trained: tuple[Path, Path], tmp_path: Path) -> None:
    super_path, ckpt = trained
    path, stats = export(ckpt, tmp_path / "bundle", batch_size=16, progress=False)
    b = gkc_bundle.load(path)
    m = b.manifest
    df = read_log(super_path)
    days = day_of(df["ts"].to_numpy())
    window = df[days < days.max()]  # the last day is held out
    assert m.counts.users == len(b.user_ids) == window["user_id"].nunique() == stats.users
    assert m.counts.items == len(b.item_ids) == window["item_id"].nunique()
    pairs = window[["user_id", "category_id"]].drop_duplicates()
    assert m.counts.user_categories == len(b.uc_vectors) == len(pairs)
    got = set(zip(b.uc_user_ids.tolist(), b.uc_category_ids.tolist(), strict=True))
    assert got == {(str(u), str(c)) for u, c in pairs.itertuples(index=False)}
    assert (m.dims.user, m.dims.item, m.dims.uc) == (32, 32, 192)
    assert b.user_vectors.shape == (m.counts.users, m.dims.user)
    assert m.interaction and m.strategy == "serving"
    assert m.source["window"] == {"first_day": int(days.min()), "last_day": int(days.max()) - 1}
    assert m.metrics["click"]["gauc"] == json.loads((ckpt / "metrics.json").read_text())["click"]["gauc"]
    assert len(np.unique(b.user_vectors, axis=0)) > 1


def test_bundle_equals_the_offline_knowledge_for_rows_after_the_window(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    super_path, ckpt = trained
    path, _ = export(ckpt, tmp_path / "bundle", progress=False)
    b = gkc_bundle.load(path)
    df = read_log(super_path)
    # Downstream rows on a later day: their knowledge uses histories up to the end of the window.
    later = df.sample(50, random_state=0).assign(ts=lambda d: d["ts"] + 10 * DAY).reset_index(drop=True)
    kfn = KnowledgeFn.load(ckpt)
    log = kfn.encode(later, df)
    k = kfn.matrix(log, ["ku_hat", "ki_hat", "ku_hat*ki_hat", "kuc_hat"])
    user_row = pd.Index(b.user_ids).get_indexer(later["user_id"].astype(str))
    item_row = pd.Index(b.item_ids).get_indexer(later["item_id"].astype(str))
    pair_keys = pd.Index(np.char.add(np.char.add(b.uc_user_ids, "|"), b.uc_category_ids))
    uc_row = pair_keys.get_indexer(
        pd.Index(later["user_id"].astype(str) + "|" + later["category_id"].astype(str))
    )
    seen = (user_row >= 0) & (item_row >= 0) & (uc_row >= 0)
    assert seen.sum() > 10
    np.testing.assert_allclose(k[seen, :32], b.user_vectors[user_row[seen]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(k[seen, 32:64], b.item_vectors[item_row[seen]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(k[seen, 64:96], k[seen, :32] * k[seen, 32:64], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k[seen, 96:], b.uc_vectors[uc_row[seen]], rtol=1e-4, atol=1e-5)


def test_export_needs_the_serving_strategy(trained: tuple[Path, Path], tmp_path: Path) -> None:
    super_path, _ = trained
    pretrain(
        PretrainConfig(
            super_path=super_path, out=tmp_path / "full", strategy="full", batch_size=400, progress=False
        )
    )
    with pytest.raises(InvalidArgument, match="--strategy serving"):
        export(tmp_path / "full", tmp_path / "bundle", progress=False)
    assert not (tmp_path / "bundle").exists()


def test_cli_pretrain_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tiny(tmp_path / "s.parquet", **{**EXPORT_SIZE, "days": 3})
    ckpt, out = tmp_path / "ckpt", tmp_path / "bundle"
    args = ["pretrain", "--super", str(path), "--out", str(ckpt), "--strategy", "serving"]
    assert main([*args, "--batch-size", "300", "--no-progress", "--tasks", "click,cart"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["metrics"]) - {"passes", "validation"} == {"click", "cart"}
    assert main(["export", "--extractor", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert gkc_bundle.load(out).manifest.counts.users == exported["users"]
    assert main(["export", "--extractor", str(tmp_path / "nope"), "--out", str(tmp_path / "b2")]) == 2
    assert "no such extractor checkpoint" in capsys.readouterr().err
    assert main(["export", "--extractor", str(ckpt)]) == 2  # neither a bundle nor GKC's store
    assert "--gkc-redis URL" in capsys.readouterr().err
    both = ["--out", str(tmp_path / "b3"), "--gkc-redis", "redis://127.0.0.1:1/0"]
    assert main(["export", "--extractor", str(ckpt), *both]) == 2


def test_streamed_bundle_equals_the_in_memory_blocks(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The bundle's vectors go batch by batch into its files; they equal the blocks computed in memory."""
    super_path, ckpt = trained
    ext, df = load_extractor(ckpt), read_log(super_path)
    path, _ = export_loaded(ext, df, tmp_path / "streamed", source=super_path, batch_size=16, progress=False)
    plan = prepare(ext, df, source=super_path)
    whole = plan.bundle({n: (0, b.n) for n, b in plan.blocks.items()}, 16, progress=False)
    streamed = gkc_bundle.load(path)  # checksums verified
    for name, arr in whole.arrays().items():
        np.testing.assert_array_equal(getattr(streamed, name.removesuffix(".npy")), arr, err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed"]


def test_a_range_of_users_is_exported_from_their_rows_and_clicks_alone(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """An export by user range (a rank of ``keep export --gkc-redis``): the module holds that range's rows
    of the user table, the digest keeps their clicks and pairs alone, and each entry equals the whole
    export's."""
    super_path, ckpt = trained
    whole_ext = load_extractor(ckpt)
    n_users = len(whole_ext.vocabs.user.keys)
    lo, hi = n_users // 3, 2 * n_users // 3
    part = load_extractor(ckpt, user_part=lambda n: (lo, hi))
    assert part.user_positions == (lo, hi)
    table = part.model.embeddings.table("user")
    assert table.shape[0] == RESERVED + hi - lo and len(part.vocabs.user.keys) == hi - lo
    np.testing.assert_array_equal(
        table[RESERVED:].numpy(),
        whole_ext.model.embeddings.table("user")[RESERVED + lo : RESERVED + hi].numpy(),
    )
    digest = LogDigest.scan(super_path, part.window[1], users=user_filter(part))
    range_keys = set(whole_ext.vocabs.user.keys[lo:hi].tolist())
    assert set(digest.clicks["user_id"].tolist()) <= range_keys
    assert set(digest.pairs["user_id"].tolist()) <= range_keys and len(digest.pairs) > 0

    def entries(ext: LoadedExtractor, log: pd.DataFrame | LogDigest) -> dict[tuple[str, ...], np.ndarray]:
        plan = prepare(ext, log, source=super_path)
        b = plan.bundle({n: (0, blk.n) for n, blk in plan.blocks.items()}, 16, progress=False)
        users = {("u", u): v for u, v in zip(b.user_ids.tolist(), b.user_vectors, strict=True)}
        pairs = zip(b.uc_user_ids.tolist(), b.uc_category_ids.tolist(), b.uc_vectors, strict=True)
        return users | {("uc", u, c): v for u, c, v in pairs}

    got, full = entries(part, digest), entries(whole_ext, read_log(super_path))
    mine = {k for k in full if k[1] in {str(u) for u in range_keys}}
    assert set(got) == mine and len(mine) < len(full)
    for key in mine:
        np.testing.assert_allclose(got[key], full[key], rtol=0, atol=1e-6, err_msg=str(key))


def test_a_failed_streamed_export_leaves_nothing(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    super_path, ckpt = trained
    ext = load_extractor(ckpt)

    def broken(*batch: object) -> object:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(ext.model, "uc_vector_per_user", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        export_loaded(ext, read_log(super_path), tmp_path / "b", source=super_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bundle_writer_with_an_empty_block(tmp_path: Path) -> None:
    writer = BundleWriter(
        tmp_path / "b", gkc_bundle.Counts(users=2, items=1, user_categories=0), gkc_bundle.Dims(3, 3, 4)
    )
    writer.append("users", np.array([[1, 2, 3]]))
    with pytest.raises(gkc_bundle.BundleError, match="NaN"):
        writer.append("users", np.array([[4, 5, np.nan]]))
    writer.append("users", np.array([[4, 5, 6]]))
    with pytest.raises(gkc_bundle.BundleError, match="do not fit"):
        writer.append("users", np.array([[7, 8, 9]]))  # a third user
    writer.append("items", np.full((1, 3), 7.0))
    path = writer.finish(user_ids=[10, 11], item_ids=["a"], uc_user_ids=[], uc_category_ids=[])
    b = gkc_bundle.load(path)
    assert b.user_ids.tolist() == ["10", "11"] and b.user_vectors[1].tolist() == [4, 5, 6]
    assert b.uc_vectors.shape == (0, 4) and b.manifest.interaction
    with pytest.raises(gkc_bundle.BundleError, match="already exists"):
        BundleWriter(path, b.manifest.counts, b.manifest.dims)


def test_bundle_writer_refuses_an_incomplete_block(tmp_path: Path) -> None:
    writer = BundleWriter(
        tmp_path / "b", gkc_bundle.Counts(users=2, items=0, user_categories=0), gkc_bundle.Dims(3, 3, 4)
    )
    writer.append("users", np.ones((1, 3)))
    with pytest.raises(gkc_bundle.BundleError, match="not complete"):
        writer.finish(user_ids=[1, 2], item_ids=[], uc_user_ids=[], uc_category_ids=[])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_per_user_kuc_equals_the_per_pair_path() -> None:
    """Issue 12 deliver 5: the export computes a user's behaviour sequence once for all of their
    categories; the vectors are exactly those of one row per (user, category) pair."""
    import torch

    from contract.extractor import ExtractorConfig
    from trainer.models.batch import id_batch
    from trainer.models.strategies import build_extractor
    from trainer.models.towers import ServingExtractor

    torch.manual_seed(0)
    cfg = ExtractorConfig(n_users=9, n_items=30, n_shops=2, n_categories=8, strategy="serving", max_len=6)
    model = build_extractor(cfg)
    assert isinstance(model, ServingExtractor)
    rng = np.random.default_rng(1)
    hist_item = rng.integers(2, 30, (5, 6))
    hist_item[:, :3] *= rng.random((5, 3)) < 0.5  # left padding of varying length; user 4 has none
    hist_item[4] = 0
    hist_cat = np.where(hist_item > 0, rng.integers(2, 8, (5, 6)), 0)
    users = np.arange(2, 7)
    owner = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4])
    category = rng.integers(2, 8, len(owner))
    with torch.inference_mode():
        per_user = model.uc_vector_per_user(
            id_batch(user=users, hist_item=hist_item, hist_category=hist_cat, max_len=6),
            torch.from_numpy(owner),
            torch.from_numpy(category),
        )
        per_pair = model.uc_vector(
            id_batch(
                user=users[owner],
                category=category,
                hist_item=hist_item[owner],
                hist_category=hist_cat[owner],
                max_len=6,
            )
        )
    np.testing.assert_array_equal(per_user.numpy(), per_pair.numpy())
