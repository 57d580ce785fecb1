"""``keep train`` under torchrun: 2 gloo processes against one process, and the backend choice.

Each rank fetches the knowledge of its own slice of the rows from the bundle (gathered afterwards),
trains on rows ``rank::2`` of every global batch with its mean loss weighted by its share of the batch,
and the gradients are averaged: the same update as one process up to float rounding, also with an odd
batch size (unequal shards) and several epochs. Measured relative parameter difference: 4e-8 to 4e-5
depending on the data (float rounding of the half-size batches, amplified through ReLU gates and Adam;
mostly in the attention projections); another seed is ~1.4 away. The test requires < 1e-3.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract import artifact as artifact_mod
from contract.log import write_log
from services.errors import InvalidArgument
from tests.support.stage2_data import random_bundle
from tests.support.torchrun_cli import torchrun_keep
from trainer.cli import main
from trainer.data.synth import generate
from trainer.distributed import BACKEND_ENV, DataParallel, choose_backend

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ARGS = ["--batch-size", "255", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp-train")
    w = generate("tiny", seed=5, progress=False)
    return {
        "train": write_log(w.train, root / "train.parquet"),
        "bundle": random_bundle(w.train, root / "bundle", 8, seed=0),
    }


def torchrun_train(*args: str) -> dict[str, object]:
    return torchrun_keep("train", *args)


def relative_difference(a: Path, b: Path) -> float:
    sa, sb = artifact_mod.load(a).state, artifact_mod.load(b).state
    assert sa.keys() == sb.keys()
    diff = sum(float(((sa[k].double() - sb[k].double()) ** 2).sum()) for k in sa)
    norm = sum(float((sa[k].double() ** 2).sum()) for k in sa)
    return (diff / norm) ** 0.5


@pytest.mark.slow  # torchrun: ~30 s on 2 busy cores
def test_two_ranks_match_one_process_with_bundle_knowledge(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--train", str(world["train"]), "--bundle", str(world["bundle"]), "--knowledge-version", "4"]
    summary = torchrun_train(*data, "--out", str(tmp_path / "two"), *TRAIN_ARGS)
    assert summary["world_size"] == 2
    assert main(["train", *data, "--out", str(tmp_path / "one"), *TRAIN_ARGS, "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["world_size"] == 1
    one, two = artifact_mod.load(tmp_path / "one"), artifact_mod.load(tmp_path / "two")
    assert two.knowledge == one.knowledge and two.knowledge["gkc"].version == 4
    assert two.config == one.config and two.vocabs == one.vocabs
    assert two.training.rows == one.training.rows == len(pd.read_parquet(world["train"]))
    assert two.training.world_size == 2
    gap = relative_difference(tmp_path / "one", tmp_path / "two")
    assert gap < 1e-3
    # The tolerance means something: another seed lands far away.
    assert main(["train", *data, "--out", str(tmp_path / "seed1"), *TRAIN_ARGS, "--seed", "1"]) == 0
    assert relative_difference(tmp_path / "one", tmp_path / "seed1") > 100 * gap


def test_shards_spans_and_weights_cover_every_row_once() -> None:
    rows = np.arange(11)
    ranks = [DataParallel(r, 3) for r in range(3)]
    assert sorted(np.concatenate([g.shard(rows) for g in ranks]).tolist()) == rows.tolist()
    # Weighted shard means average to the global mean.
    assert sum(g.weight(len(g.shard(rows)), len(rows)) * 1.0 for g in ranks) / 3 == pytest.approx(1.0)
    assert DataParallel().weight(7, 11) == 1.0
    spans = [g.span(1000, block=64) for g in ranks]
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(lo % 64 == 0 for lo, _ in spans)  # cut at batch boundaries
    assert [g.span(2) for g in ranks] == [(0, 0), (0, 1), (1, 2)]  # fewer rows than ranks


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert choose_backend(None, cuda=True) == ("gloo", "cpu")  # gloo unless NCCL is asked for
    assert choose_backend("nccl", cuda=True, local_rank=1) == ("cpu:gloo,cuda:nccl", "cuda:1")
    assert choose_backend("nccl", cuda=False) == ("gloo", "cpu")  # no CUDA: falls back
    monkeypatch.setenv(BACKEND_ENV, "NCCL")
    assert choose_backend(None, cuda=True, local_rank=0) == ("cpu:gloo,cuda:nccl", "cuda:0")
    with pytest.raises(InvalidArgument, match="mpi"):
        choose_backend("mpi", cuda=False)
