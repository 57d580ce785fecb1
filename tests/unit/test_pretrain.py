"""Pre-training loop: learning, resume, --init continuation, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.log import read_log, write_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from services.errors import InvalidArgument
from tests.support.stage1_data import tiny_log, write_tiny
from trainer.data.dataset import EncodedLog
from trainer.export import export
from trainer.losses import pointwise_loss
from trainer.models.batch import feature_batch
from trainer.models.checkpoint import load_extractor, load_state
from trainer.models.strategies import build_extractor
from trainer.pretrain import PretrainConfig, pretrain
from trainer.pretrain_steps import day_batches

SMALL = {"users": 30, "items": 40, "categories": 5, "days": 5, "rows_per_day": 1200}


def cfg(super_path: Path, out: Path, **kw: object) -> PretrainConfig:
    base: dict[str, object] = {
        "batch_size": 250,
        "progress": False,
        "checkpoint_every": 2,
        "strategy": "full",
        "passes": 1,
    }
    base.update(kw)
    return PretrainConfig(super_path=super_path, out=out, **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("s1") / "super.parquet", **SMALL)


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_state(a), load_state(b)
    assert sa["model"].keys() == sb["model"].keys()
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name
    dense_a, dense_b = sa["optimizer"]["dense"]["state"], sb["optimizer"]["dense"]["state"]
    for pa, pb in zip(dense_a.values(), dense_b.values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])
    for key, moments in sa["optimizer"]["sparse"].items():
        assert torch.equal(moments["momentum1"], sb["optimizer"]["sparse"][key]["momentum1"]), key


def holdout_click_loss(model: torch.nn.Module, path: Path, vocabs: object) -> float:
    df = read_log(path)
    days = day_of(df["ts"].to_numpy())
    test = df[days == days.max()].reset_index(drop=True)
    log = EncodedLog.encode(test, vocabs, history_from=df)  # type: ignore[arg-type]
    batch = feature_batch(log, np.arange(len(log)), ["click"])
    model.eval()
    with torch.no_grad():
        return pointwise_loss(model(batch)["click"], batch.labels["click"]).item()


def test_loss_decreases_and_checkpoint_is_complete(log_file: Path, tmp_path: Path) -> None:
    result = pretrain(cfg(log_file, tmp_path / "x", batch_size=100))
    assert result.completed and result.trained_days == sorted(result.trained_days)
    assert len(result.trained_days) == 4  # the fifth day is held out
    ext = load_extractor(tmp_path / "x")
    assert ext.progress["state"] == "done"
    assert ext.progress["batches_done"] == ext.progress["batches_total"] == result.batches
    torch.manual_seed(0)
    untrained = build_extractor(ext.model.cfg)
    before = holdout_click_loss(untrained, log_file, ext.vocabs)
    after = holdout_click_loss(ext.model, log_file, ext.vocabs)
    assert after < before - 0.02
    assert set(ext.metrics) == {"click", "conversion", "cart", "passes"}
    assert ext.metrics["click"]["gauc"] > 0.5


def test_batches_follow_days_and_never_cross_them() -> None:
    days = np.array([3, 1, 1, 2, 3, 1, 2, 2, 2])
    batches = day_batches(days, seed=5, batch_size=2)
    seen = [days[b].tolist() for b in batches]
    assert all(len(set(s)) == 1 for s in seen)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(days)))
    again = day_batches(days, seed=5, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_pair_keys_pair_the_rows_of_one_user_and_day(tmp_path: Path) -> None:
    """Pairs are drawn among rows with one key: one per (user, day) when the log has no sessions."""
    from contract.ids import Vocabs

    df = tiny_log(users=9, items=12, categories=3, days=3, rows_per_day=200).drop(
        columns=["session_id"], errors="ignore"
    )
    log = EncodedLog.encode(df, Vocabs.build(df))
    same_key = log.pair_key[:, None] == log.pair_key[None, :]
    days = day_of(df["ts"].to_numpy())
    users = df["user_id"].to_numpy()
    assert np.array_equal(same_key, (users[:, None] == users[None, :]) & (days[:, None] == days[None, :]))
    assert np.array_equal(np.unique(log.pair_key), np.arange(log.pair_key.max() + 1))  # dense codes


@pytest.mark.parametrize("strategy", ["full", "serving"])
def test_resume_after_a_kill_equals_one_uninterrupted_run(
    log_file: Path, tmp_path: Path, strategy: str
) -> None:
    pretrain(cfg(log_file, tmp_path / "one", strategy=strategy))
    partial = pretrain(cfg(log_file, tmp_path / "two", strategy=strategy), stop_after_batches=5)
    assert not partial.completed
    # Killed after 5 batches; the last checkpoint holds 4 (checkpoint_every=2).
    assert load_extractor(tmp_path / "two").progress["batches_done"] == 4
    resumed = pretrain(cfg(log_file, tmp_path / "two", strategy=strategy))
    assert resumed.completed
    assert_same_state(tmp_path / "one", tmp_path / "two")


def test_init_continuation_equals_one_uninterrupted_run(log_file: Path, tmp_path: Path) -> None:
    df = read_log(log_file)
    days = day_of(df["ts"].to_numpy())
    first = write_log(df[days <= days.min() + 2], tmp_path / "first.parquet")  # trains days 0-1
    pretrain(cfg(log_file, tmp_path / "all"))  # trains days 0-3, holds out 4
    pretrain(cfg(first, tmp_path / "a"))
    cont = pretrain(cfg(log_file, tmp_path / "b", init=tmp_path / "a"))
    assert cont.trained_days == [int(days.min()) + 2, int(days.min()) + 3]
    assert cont.window == (int(days.min()), int(days.min()) + 3)
    # Same vocabulary in both (every id of days 2-3 already occurs in days 0-1 here) ...
    assert (
        load_extractor(tmp_path / "b").vocabs.to_json() == load_extractor(tmp_path / "all").vocabs.to_json()
    )
    # ... so the continued run must land on exactly the uninterrupted run's parameters.
    assert_same_state(tmp_path / "all", tmp_path / "b")


def test_continuation_gives_new_ids_trained_rows_that_the_export_contains(tmp_path: Path) -> None:
    """Issue 12 deliver 4: ids first seen in a continuation's days used to map to OOV and were never
    exported; now they get rows of their own, trained and exported, and old ids keep their rows."""
    df = tiny_log(users=30, items=40, categories=5, days=4, rows_per_day=1200)
    days = day_of(df["ts"].to_numpy())
    new_day = days == days.max() - 1
    df.loc[new_day & (df["user_id"] == df["user_id"].iloc[0]), "user_id"] = 999_999  # a new user
    df.loc[new_day & (df["item_id"] == df["item_id"].iloc[0]), "item_id"] = 888_888  # a new item
    path = write_log(df, tmp_path / "super.parquet")
    first = write_log(df[days <= days.min() + 1], tmp_path / "first.parquet")
    pretrain(cfg(first, tmp_path / "a", strategy="serving"))
    pretrain(cfg(path, tmp_path / "b", strategy="serving", init=tmp_path / "a"))
    a, b = load_extractor(tmp_path / "a"), load_extractor(tmp_path / "b")
    old_users = a.vocabs.user.keys
    assert b.vocabs.user.lookup(old_users).tolist() == a.vocabs.user.lookup(old_users).tolist()
    user_row = int(b.vocabs.user.lookup(np.array([999_999]))[0])
    item_row = int(b.vocabs.item.lookup(np.array([888_888]))[0])
    assert user_row == len(a.vocabs.user) and item_row == len(a.vocabs.item)  # appended
    assert b.model.cfg.n_users == len(b.vocabs.user) == len(a.vocabs.user) + 1
    sparse = load_state(tmp_path / "b")["optimizer"]["sparse"]
    # Trained: the new rows received gradients (row-wise Adagrad's sum of squares is zero for an
    # untouched row; the user table keeps one per row and column shard).
    n_users = b.model.cfg.n_users
    assert sparse["embeddings.user.weight"]["momentum1"].reshape(-1, n_users)[:, user_row].min() > 0
    assert sparse["embeddings.item.weight"]["momentum1"][item_row] > 0
    bundle_path, _ = export(tmp_path / "b", tmp_path / "bundle", progress=False)
    bundle = gkc_bundle.load(bundle_path)
    assert "999999" in bundle.user_ids.tolist() and "888888" in bundle.item_ids.tolist()
    assert "999999" in bundle.uc_user_ids.tolist()
    vec = bundle.user_vectors[bundle.user_ids.tolist().index("999999")]
    assert np.isfinite(vec).all() and np.abs(vec).sum() > 0


def test_rerunning_a_completed_run_reports_it_and_continuing_without_new_days_is_refused(
    log_file: Path, tmp_path: Path
) -> None:
    """Issue 18: rerunning a finished ``keep pretrain`` exited 2; now it says the run is done."""
    first = pretrain(cfg(log_file, tmp_path / "a"))
    before = load_state(tmp_path / "a")["progress"]
    again = pretrain(cfg(log_file, tmp_path / "a"))
    assert again.already_done and again.batches == 0 and not first.already_done
    assert again.window == first.window and again.rows == first.rows and again.metrics == first.metrics
    assert load_state(tmp_path / "a")["progress"] == before  # nothing was trained or written
    with pytest.raises(InvalidArgument, match="no training day after"):
        pretrain(cfg(log_file, tmp_path / "b", init=tmp_path / "a"))


def test_the_default_strategy_is_serving_and_init_carries_the_checkpoints(
    log_file: Path, tmp_path: Path
) -> None:
    """Issue 18: ``--init`` of a serving run failed with "--strategy full does not match"."""
    df = read_log(log_file)
    first = tmp_path / "first.parquet"
    days = day_of(df["ts"].to_numpy())
    write_log(df[days <= days.min() + 1], first)
    pretrain(cfg(first, tmp_path / "a", strategy=None))
    assert load_extractor(tmp_path / "a").model.cfg.strategy == "serving"
    pretrain(cfg(log_file, tmp_path / "b", init=tmp_path / "a", strategy=None))
    assert load_extractor(tmp_path / "b").model.cfg.strategy == "serving"
    with pytest.raises(InvalidArgument, match="leave --strategy out"):
        pretrain(cfg(log_file, tmp_path / "c", init=tmp_path / "a", strategy="full"))


def test_resume_with_other_settings_is_refused(log_file: Path, tmp_path: Path) -> None:
    pretrain(cfg(log_file, tmp_path / "a"), stop_after_batches=3)
    with pytest.raises(InvalidArgument, match="cannot resume"):
        pretrain(cfg(log_file, tmp_path / "a", seed=7))


def test_the_tables_learning_rate_reaches_their_optimizer(log_file: Path, tmp_path: Path) -> None:
    """``sparse_lr_ratio`` 0 freezes the id tables (however many steps; the dense layers still learn),
    the default moves them; the ratio is recorded in the checkpoint's settings."""
    tables = [f"embeddings.{t}.weight" for t in ("user", "item", "shop", "category")]
    pretrain(cfg(log_file, tmp_path / "frozen", sparse_lr_ratio=0.0))
    early_cfg = cfg(log_file, tmp_path / "frozen_early", sparse_lr_ratio=0.0, checkpoint_every=1)
    pretrain(early_cfg, stop_after_batches=1)
    pretrain(cfg(log_file, tmp_path / "default"))
    frozen, early, moved = (load_state(tmp_path / n)["model"] for n in ("frozen", "frozen_early", "default"))
    for name in tables:
        assert torch.equal(frozen[name], early[name]), name
        assert not torch.equal(frozen[name], moved[name]), name
    dense = [n for n in frozen if n not in tables and frozen[n].is_floating_point()]
    assert any(not torch.equal(frozen[n], early[n]) for n in dense)  # the dense layers did train
    assert load_extractor(tmp_path / "frozen").config.train.sparse_lr_ratio == 0.0
    assert load_extractor(tmp_path / "default").config.train.sparse_lr_ratio is None
    # a resume must ask for the ratio it started with (else the recorded settings would not be true)
    with pytest.raises(InvalidArgument, match="cannot resume with different \\['sparse_lr_ratio'\\]"):
        pretrain(cfg(log_file, tmp_path / "frozen_early", checkpoint_every=1))


def test_the_user_table_splits_into_the_column_shards_the_run_chose(log_file: Path, tmp_path: Path) -> None:
    """``user_column_shards``: that many user pieces in the checkpoint, recorded in its settings and kept
    by a continuation; asking another count of a continuation or a resume, or a width FBGEMM cannot
    run, is refused with the reason."""
    df = read_log(log_file)
    days = day_of(df["ts"].to_numpy())
    first = write_log(df[days <= days.min() + 2], tmp_path / "first.parquet")
    pretrain(cfg(first, tmp_path / "a", user_column_shards=3))
    pretrain(cfg(log_file, tmp_path / "b", init=tmp_path / "a"))  # the count left out: the init's
    for run in ("a", "b"):
        assert load_extractor(tmp_path / run).config.train.user_column_shards == 3
        user = load_state(tmp_path / run, pieces=True)["model"]["embeddings.user.weight"]
        assert sorted(piece.offsets[1] for piece in user.pieces) == [0, 16, 32], run
    with pytest.raises(InvalidArgument, match="--user-column-shards 2 does not match"):
        pretrain(cfg(log_file, tmp_path / "c", init=tmp_path / "a", user_column_shards=2))
    pretrain(cfg(log_file, tmp_path / "d", user_column_shards=4), stop_after_batches=3)
    with pytest.raises(InvalidArgument, match="cannot resume with different \\['user_column_shards'\\]"):
        pretrain(cfg(log_file, tmp_path / "d", user_column_shards=2))
    with pytest.raises(InvalidArgument, match="a multiple of 4"):
        pretrain(cfg(log_file, tmp_path / "e", user_column_shards=8))


def test_missing_label_column_skips_the_task(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "s.parquet", **{**SMALL, "days": 3}, labels=("conversion",))
    result = pretrain(cfg(path, tmp_path / "x", tasks=("click", "conversion", "cart")))
    ext = load_extractor(tmp_path / "x")
    assert ext.model.cfg.tasks == ("click", "conversion")
    assert set(result.metrics) == {"click", "conversion", "passes"}


def test_bad_arguments_are_clear_errors(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="leaves nothing to train"):
        pretrain(cfg(log_file, tmp_path / "x", holdout_days=5))
    with pytest.raises(InvalidArgument, match="unknown task"):
        pretrain(cfg(log_file, tmp_path / "x", tasks=("click", "like")))
    with pytest.raises(InvalidArgument, match="click task is required"):
        pretrain(cfg(log_file, tmp_path / "x", tasks=("conversion",)))


def test_a_dense_adam_checkpoint_still_loads_but_resuming_it_is_refused(
    log_file: Path, tmp_path: Path
) -> None:
    """Checkpoints of the trainer before TorchRec (``optimizer``: one Adam state dict over every
    parameter) keep the same model layout, so export reads them; resuming or continuing one is refused
    with a one-line error naming the fix."""
    pretrain(cfg(log_file, tmp_path / "a"), stop_after_batches=3)  # checkpoint after 2 batches
    file = tmp_path / "a" / "checkpoint.pt"
    state = load_state(tmp_path / "a")  # tables whole, in the one file, as that trainer wrote them
    state["optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]}
    torch.save(state, file)
    shutil.rmtree(tmp_path / "a" / "shards")
    ext = load_extractor(tmp_path / "a")
    assert torch.equal(ext.model.embeddings.table("user"), state["model"]["embeddings.user.weight"])
    with pytest.raises(
        InvalidArgument, match=r"dense-Adam trainer .* \(keep pretrain --out NEW_DIR\)$"
    ) as err:
        pretrain(cfg(log_file, tmp_path / "a"))
    assert "\n" not in str(err.value)


def test_checkpoints_keep_the_tables_in_pieces_and_older_gathered_ones_still_resume(
    log_file: Path, tmp_path: Path
) -> None:
    """``checkpoint.pt`` holds no table: the tables and their optimizer state are pieces under
    ``shards/<tag>/`` (trainer.shard_files), only the current tag's kept. A checkpoint of the gathered
    layout (tables whole in ``checkpoint.pt``, before pieces) resumes to the same parameters."""
    pretrain(cfg(log_file, tmp_path / "full"))
    pretrain(cfg(log_file, tmp_path / "a"), stop_after_batches=5)  # checkpoints at batches 2 and 4
    raw = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("embeddings.") for k in raw["model"])
    assert "sparse" not in raw["optimizer"]
    (tag,) = [d.name for d in (tmp_path / "a" / "shards").iterdir()]  # the batch-2 pieces are gone
    assert raw["shards"]["dir"] == f"shards/{tag}" and tag.startswith("000000000004-")
    # pieces of a save that was killed before its checkpoint.pt was replaced change nothing
    stray = tmp_path / "a" / "shards" / "000000000006-0-0"
    shutil.copytree(tmp_path / "a" / "shards" / tag, stray)
    for piece in stray.glob("*.npy"):
        np.save(piece, np.full_like(np.load(piece), 7.0))
    gathered = tmp_path / "b"
    shutil.copytree(tmp_path / "a", gathered)
    torch.save(load_state(tmp_path / "a"), gathered / "checkpoint.pt")  # the gathered layout
    shutil.rmtree(gathered / "shards")
    for run in (tmp_path / "a", gathered):
        pretrain(cfg(log_file, run))
        resumed, full = load_state(run)["model"], load_state(tmp_path / "full")["model"]
        assert resumed.keys() == full.keys()
        assert all(torch.equal(resumed[k], full[k]) for k in full), run
    assert [d.name for d in (tmp_path / "a" / "shards").iterdir()] != [stray.name]
    assert not stray.exists()  # dropped by the next checkpoint
