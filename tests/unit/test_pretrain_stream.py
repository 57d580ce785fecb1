"""Pre-training as a stream (issue 12 deliver 2): a dataset sequenced by ``keep data sequences`` is read
one day partition at a time, each rank reading only its shards' rows, and gives the in-memory path's
batches and, for the same seed, its trained parameters bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contract.log import read_log, write_dataset
from services.errors import InvalidArgument
from tests.support.stage1_data import tiny_log
from tests.support.torchrun_cli import torchrun_keep
from trainer.data.sequence_stage import sequence_log
from trainer.data.source import InMemorySource, LogSource
from trainer.data.stream import SequencedSource
from trainer.distributed import DataParallel
from trainer.models.batch import FeatureBatch, feature_batch
from trainer.models.checkpoint import load_extractor, load_state
from trainer.pretrain import PretrainConfig, pretrain

SMALL = {"users": 30, "items": 40, "categories": 5, "days": 5, "rows_per_day": 1200}
#: Training runs: fewer rows, the "full" strategy (one form), small batches (~3 s a run on a quiet core).
TRAIN = {"users": 20, "items": 30, "categories": 4, "days": 4, "rows_per_day": 300}


def write_both(root: Path, max_len: int = 20, **kw: object) -> tuple[Path, Path]:
    """The same rows as a plain dataset (in memory) and as a sequenced one (streamed)."""
    df = tiny_log(**kw)  # type: ignore[arg-type]
    df["ts"] = df["ts"] // 60 * 60  # clicks sharing seconds with rows and with each other
    write_dataset(df, root / "plain", files_per_day=2)
    sequence_log(root / "plain", root / "seq", max_len=max_len)
    return root / "plain", root / "seq"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_both(tmp_path_factory.mktemp("stream"), **SMALL)


def cfg(super_path: Path, out: Path, **kw: object) -> PretrainConfig:
    base: dict[str, object] = {
        "batch_size": 100,
        "progress": False,
        "checkpoint_every": 2,
        "max_len": 12,
        "strategy": "full",
        "passes": 1,
    }
    base.update(kw)
    return PretrainConfig(super_path=super_path, out=out, **base)  # type: ignore[arg-type]


def assert_same_batch(a: FeatureBatch, b: FeatureBatch) -> None:
    for name in ("user", "item", "shop", "category", "hist_item", "hist_category"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for field in ("labels", "task_rows"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), field
    assert a.pairs.keys() == b.pairs.keys()
    for task in a.pairs:
        assert all(torch.equal(p, q) for p, q in zip(a.pairs[task], b.pairs[task], strict=True)), task


@pytest.mark.parametrize(
    ("group", "budget"),
    [
        (DataParallel(), None),
        (DataParallel(rank=1, world=2), None),
        (DataParallel(), 600),
        (DataParallel(), 1),
    ],
    ids=["1 rank", "rank 1 of 2", "600 rows in memory", "1 row in memory"],
)
def test_the_stream_gives_the_in_memory_batches(
    logs: tuple[Path, Path], group: DataParallel, budget: int | None
) -> None:
    plain, seq = logs
    memory: LogSource = InMemorySource(read_log(plain), str(plain))
    streamed: LogSource = SequencedSource(seq)
    assert streamed.days() == memory.days() and streamed.columns() == memory.columns()
    days = memory.days()[:-1]
    assert streamed.rows(days) == memory.rows(days)
    vocabs = memory.vocabs(days)
    assert streamed.vocabs(days) == vocabs
    kw = {"seed": 3, "batch_size": 250, "passes": 2, "max_len": 12, "group": group}
    a = memory.batches(days, vocabs, **kw)  # type: ignore[arg-type]
    b = streamed.batches(days, vocabs, **kw, rows_in_memory=budget)  # type: ignore[arg-type]
    assert a.sizes == b.sizes and len(a.sizes) == 2 * 4 * 5
    tasks = ("click", "conversion", "cart")
    pairs = zip(a.iter_from(0), b.iter_from(0), strict=True)
    for (log_a, rows_a), (log_b, rows_b) in pairs:
        if group.enabled:
            assert len(log_b) < len(log_a)  # this rank read only its shards' rows of the day
        if budget is not None:  # a run of whole batches, no more rows than the budget unless one batch
            assert len(log_b) <= max(budget, len(rows_b)) and len(log_b) < len(log_a)
        assert_same_batch(
            feature_batch(log_a, rows_a, tasks, with_pairs=True),
            feature_batch(log_b, rows_b, tasks, with_pairs=True),
        )
    # A resumed run starts mid-stream: the same batches from there on.
    tail_a, tail_b = list(a.iter_from(23)), list(b.iter_from(23))
    assert len(tail_a) == len(tail_b) == len(a.sizes) - 23
    assert_same_batch(feature_batch(*tail_a[0], tasks), feature_batch(*tail_b[0], tasks))
    [(log_a, pop_a)] = memory.holdout(vocabs, memory.days()[-1:], 12)
    parts = list(streamed.holdout(vocabs, memory.days()[-1:], 12, rows_in_memory=budget))
    assert len(parts) == (1 if budget is None else -(-len(log_a) // budget))
    start = 0
    for log_b, pop_b in parts:  # the held-out day in parts of the budget, in file order
        rows = np.arange(start, start + len(log_b))
        assert_same_batch(feature_batch(log_a, rows, tasks), feature_batch(log_b, rows - start, tasks))
        assert np.array_equal(pop_a[rows], pop_b)
        start += len(log_b)
    assert start == len(log_a)


def test_streamed_pretraining_equals_the_in_memory_run(tmp_path: Path) -> None:
    plain, seq = write_both(tmp_path, **TRAIN)
    pretrain(cfg(plain, tmp_path / "memory"))
    streamed = pretrain(cfg(seq, tmp_path / "stream"))
    assert streamed.completed and streamed.batches == 3 * 3  # 3 training days of 3 batches
    a, b = load_extractor(tmp_path / "memory"), load_extractor(tmp_path / "stream")
    assert a.vocabs == b.vocabs and a.metrics == b.metrics and a.progress == b.progress
    sa, sb = load_state(tmp_path / "memory"), load_state(tmp_path / "stream")
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name
    # Killed midway and resumed, the stream skips the days it holds and lands on the same parameters.
    pretrain(cfg(seq, tmp_path / "resumed"), stop_after_batches=5)
    assert pretrain(cfg(seq, tmp_path / "resumed")).batches == 9 - 4  # from the checkpoint at 4: mid day 2
    sr = load_state(tmp_path / "resumed")["model"]
    assert all(torch.equal(sr[k], sb["model"][k]) for k in sr)
    # A day read in runs of batches (here 2 batches of 100 rows at a time) and the held-out day in parts.
    budgeted = pretrain(cfg(seq, tmp_path / "budget", rows_in_memory=250))
    assert budgeted.completed and load_extractor(tmp_path / "budget").metrics == a.metrics
    sc = load_state(tmp_path / "budget")["model"]
    assert all(torch.equal(sc[k], sb["model"][k]) for k in sc)


def test_a_longer_window_than_sequenced_is_refused(logs: tuple[Path, Path], tmp_path: Path) -> None:
    _, seq = logs
    with pytest.raises(InvalidArgument, match="sequences of 20 clicks; --max-len 50"):
        pretrain(cfg(seq, tmp_path / "x", max_len=50, passes=1))


@pytest.mark.slow  # torchrun: two 2-process runs, ~1-2 min on 2 busy cores
def test_two_ranks_streaming_their_own_rows_equal_two_ranks_in_memory(tmp_path: Path) -> None:
    plain, seq = write_both(tmp_path, max_len=50, **TRAIN)  # the CLI's window: 50 clicks
    common = ("--batch-size", "100", "--strategy", "full", "--passes", "1", "--no-progress")
    for name, data in (("memory", plain), ("stream", seq)):
        summary = torchrun_keep("pretrain", "--super", str(data), "--out", str(tmp_path / name), *common)
        assert summary["world_size"] == 2
    sa, sb = load_state(tmp_path / "memory")["model"], load_state(tmp_path / "stream")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
