"""The shared contract (docs/architecture.md, "The contract"): one vocabulary for training and serving,
typed metadata, and the log reader every room uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract import artifact as artifact_mod
from contract.downstream import DownstreamConfig
from contract.extractor import CheckpointConfig, ExtractorConfig, PretrainSettings, TrainingWindow
from contract.ids import OOV, PAD, Vocab, Vocabs, canonical_ids, sorted_unique
from contract.knowledge import GKC_BLOCKS, Dims, KnowledgeSchema, KnowledgeSpec
from contract.log import DataError, read_log, write_log
from contract.schema import TASKS
from ranker.features import clicks_of, iter_log_batches
from ranker.model import DownstreamModel
from services.errors import InvalidArgument


@pytest.mark.parametrize(
    ("keys", "probe"),
    [
        (np.array([5, 3, 99, 42]), np.array([42, 7, 3, 99, 5, -1])),
        (np.array(["b", "a", "zz"]), np.array(["zz", "q", "a"])),
        (np.array([10, 2, 33]), np.array(["33", "2", "x", "10"])),
        (np.array(["10", "2", "33"]), np.array([33, 2, 4])),
        (np.array([], dtype=np.int64), np.array([1, 2])),
    ],
)
def test_serving_encoder_gives_the_training_rows(keys: np.ndarray, probe: np.ndarray) -> None:
    """The ranker's dict encoder and the trainer's vectorised lookup agree, also across a JSON trip."""
    vocab = Vocab.build(keys)
    served = Vocab.from_json(json.loads(json.dumps(vocab.to_json())))
    expected = vocab.lookup(probe)
    np.testing.assert_array_equal(served.encoder().encode(canonical_ids(probe).tolist()), expected)
    np.testing.assert_array_equal(served.lookup(probe), expected)
    assert served == vocab and len(served) == len(vocab)


def test_encoder_pads_empty_ids_and_refuses_nothing() -> None:
    enc = Vocab.build(np.array(["s1", "s2"])).encoder()
    np.testing.assert_array_equal(enc.encode(["s2", "", "s9"], empty_is_pad=True), [3, PAD, OOV])
    np.testing.assert_array_equal(enc.encode(["", "s1"]), [OOV, 2])
    assert enc.known(5) == ["s1", "s2"]


def test_extended_vocab_keeps_old_rows_and_appends_new_ids() -> None:
    """Issue 12 deliver 4: a continuation's new ids get rows after the old ones; no old row moves."""
    old = Vocab.build(np.array([3, 7]))
    assert old.extended(np.array([], dtype=np.int64)) is old
    assert old.extended(np.array([7, 3])) is old
    grown = old.extended(np.array([9, 5, 7, 5]))
    assert grown.keys.tolist() == [3, 7, 5, 9]
    assert grown.lookup(np.array([3, 7, 5, 9, 4])).tolist() == [2, 3, 4, 5, OOV]
    mixed = old.extended(np.array(["x"]))
    assert mixed.keys.tolist() == ["3", "7", "x"] and mixed.lookup(np.array([7]))[0] == 3
    df = pd.DataFrame({"user_id": [1], "item_id": [9], "category_id": [4]})
    vocabs = Vocabs.build(df, init=Vocabs.build(df.assign(item_id=[10])))
    assert vocabs.item.keys.tolist() == [10, 9] and vocabs.shop is None and vocabs.n_shops() == 2


@pytest.mark.parametrize(
    "keys", [np.array([42, 7, 10**15]), np.array(["b", "a", "zz-longer"]), np.array([], dtype=np.int64)]
)
def test_vocabs_round_trip_as_memory_mapped_npy(tmp_path: Path, keys: np.ndarray) -> None:
    """Issue 12 deliver 4: vocabularies are saved as ``.npy`` key arrays and load memory-mapped, with
    the same rows (a grown, unsorted vocabulary included)."""
    user = Vocab.build(keys).extended(np.array(["new"]) if keys.dtype.kind == "U" else np.array([1]))
    vocabs = Vocabs(user=user, item=Vocab.build(keys), category=Vocab.build(np.array([5])), shop=None)
    root = vocabs.save(tmp_path / "vocabs")
    assert sorted(p.name for p in root.iterdir()) == ["category.npy", "item.npy", "user.npy"]
    back = Vocabs.load(root)
    assert isinstance(back.user.keys, np.memmap) or len(back.user.keys) == 0
    assert back == vocabs
    probe = np.concatenate([vocabs.user.keys, vocabs.user.keys[:1]])
    np.testing.assert_array_equal(back.user.lookup(probe), vocabs.user.lookup(probe))
    assert Vocabs.from_json(json.loads(json.dumps(vocabs.to_json()))) == back  # the old JSON form
    (root / "item.npy").unlink()
    with pytest.raises(InvalidArgument, match=r"item\.npy"):
        Vocabs.load(root)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).integers(-50, 50, 1000),
        np.array([7], dtype=np.int32),
        np.zeros(0, dtype=np.int64),
        np.array(["b", "a", "b", "10"]),
        np.array([3, 3, 3], dtype=np.uint8),
    ],
    ids=["ints", "one", "empty", "strings", "uint8"],
)
def test_sorted_unique_is_np_unique(values: np.ndarray) -> None:
    got, want = sorted_unique(values), np.unique(values)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_canonical_ids_refuse_floats() -> None:
    assert canonical_ids(np.array([7, 42])).tolist() == ["7", "42"]
    with pytest.raises(InvalidArgument, match="floats"):
        canonical_ids(np.array([1.5]))
    empties: list[object] = [[], np.zeros(0, np.int64), np.zeros(0, "<U40")]
    for empty in empties:  # joined to other ids, they widen nothing
        assert canonical_ids(empty).dtype == np.dtype("<U1") and canonical_ids(empty).shape == (0,)


def _artifact(max_len: int) -> artifact_mod.Artifact:
    schema = KnowledgeSchema.gkc(Dims(4, 4, 3), interaction=True)
    cfg = DownstreamConfig(n_users=4, n_items=4, n_categories=4, mlp=(8, 4), max_len=max_len)
    cfg = cfg.with_plugin("gkc", schema.dim)
    vocab = Vocab.build([1, 2])
    return artifact_mod.Artifact(
        config=cfg,
        task="click",
        vocabs=Vocabs(user=vocab, item=vocab, category=vocab, shop=None),
        state=DownstreamModel(cfg).state_dict(),
        knowledge={"gkc": KnowledgeSpec(schema=schema, version=3)},
        training=artifact_mod.TrainingInfo(rows=10, days=(1, 2), train_file="t.parquet"),
    )


def test_artifact_carries_max_len_and_typed_training_info(tmp_path: Path) -> None:
    path = artifact_mod.save(_artifact(max_len=7), tmp_path / "model")
    back = artifact_mod.load(path)
    assert back.max_len == 7 and back.pinned_version == 3
    assert back.training == artifact_mod.TrainingInfo(rows=10, days=(1, 2), train_file="t.parquet")


def _as_format_1(path: Path, info: dict[str, object]) -> None:
    meta = json.loads((path / "artifact.json").read_text())
    meta["format_version"] = 1
    meta["config"].pop("max_len")
    meta.pop("training")
    meta["info"] = info
    legacy = {"ku_hat": "ku", "ki_hat": "ki", "ku_hat*ki_hat": "ku*ki", "kuc_hat": "kuc"}
    for spec in meta["knowledge"].values():
        spec["schema"]["blocks"] = [[legacy[n], d] for n, d in spec["schema"]["blocks"]]
    (path / "artifact.json").write_text(json.dumps(meta))


def test_format_1_artifacts_still_load_and_one_without_max_len_is_refused(tmp_path: Path) -> None:
    path = artifact_mod.save(_artifact(max_len=9), tmp_path / "old")
    _as_format_1(path, {"max_len": 9, "rows": 10, "warm_start": True})
    old = artifact_mod.load(path)
    assert old.max_len == 9 and old.training.rows == 10 and old.training.warm_start
    assert [n for n, _ in old.knowledge["gkc"].schema.blocks] == list(GKC_BLOCKS)
    _as_format_1(artifact_mod.save(_artifact(max_len=9), tmp_path / "older"), {"rows": 10})
    with pytest.raises(artifact_mod.ArtifactError, match="max_len"):
        artifact_mod.load(tmp_path / "older")


def test_checkpoint_config_round_trip_and_refusals() -> None:
    cfg = CheckpointConfig(
        extractor=ExtractorConfig(n_users=5, n_items=6, n_shops=2, n_categories=3, strategy="serving"),
        train=PretrainSettings(TASKS, 0.25, 0, 100, 1e-3, "serving", TASKS),
        data=TrainingWindow("/x/super.parquet", (3, 4), (5,), first_day=1, last_day=4, init_from="/x/a"),
    )
    data = json.loads(json.dumps(cfg.to_json()))
    assert data["data"]["window"] == {"first_day": 1, "last_day": 4}
    assert CheckpointConfig.from_json(data) == cfg and cfg.window == (1, 4)
    with pytest.raises(InvalidArgument, match="format"):
        CheckpointConfig.from_json({**data, "format": 9})
    with pytest.raises(InvalidArgument, match="malformed"):
        CheckpointConfig.from_json({**data, "train": {"tasks": ["click"]}})


def test_read_log_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no Parquet files"):
        read_log(tmp_path)


@pytest.mark.parametrize("name", ["log.pq", "log.csv.gz", "log.parquet", "log.csv"])
def test_feature_store_reads_every_log_suffix(tmp_path: Path, name: str) -> None:
    """Issue 17 item 6: the feature store's reader took only ``.parquet`` as Parquet (a valid ``log.pq``
    failed with a CSV tokenizer error) and never read ``.csv.gz``; the backfill reads logs like the
    trainer does."""
    df = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "item_id": [10, 11, 12],
            "category_id": [5, 5, 6],
            "ts": [100, 200, 300],
            "click": [1, 1, 0],
            "shop_id": [1, 2, 3],
        }
    )
    (batch,) = iter_log_batches(write_log(df, tmp_path / name))
    assert list(clicks_of(batch, 0)) == [(0, "1", "10", "5", 100.0), (1, "1", "11", "5", 200.0)]


def test_feature_store_refuses_a_log_that_breaks_the_contract(tmp_path: Path) -> None:
    bad = pd.DataFrame({"user_id": [1], "item_id": [2], "category_id": [3], "ts": [4], "click": [7]})
    with pytest.raises(DataError, match="'click' must be 0/1"):
        list(iter_log_batches(write_log(bad, tmp_path / "bad.parquet")))


def test_gkc_imports_without_torch_or_pandas() -> None:
    """``gkc`` runs in an image without torch and pandas: every module imports with both unimportable."""
    code = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "pandas"):
            raise ImportError(f"{name} is not importable here")
        return None
sys.meta_path.insert(0, Block())
import gkc
names = [m.name for m in pkgutil.walk_packages(gkc.__path__, "gkc.")]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules and "pandas" not in sys.modules
print(len(names))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 10
