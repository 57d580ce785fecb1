"""``keep bench train``: pre-training throughput vs DeepCTR-Torch's DIN, and export throughput.

Both trainers run in the same process, on the same batches (the synthetic ``medium`` super-domain log,
``tiny`` with ``--quick``), at the same shape: user id 48-d, item/shop/category 16-d, a 50-click
behaviour sequence sharing the item and category tables, attention MLP (64, 16), tower
[512, 256, 128, 64, 1], batch 2000, Adam lr 0.001, all cores. Each is time-boxed (30 s, 3 s quick)
after a short warm-up, interleaved in slices (a shared machine's load then hits all alike); the
batch preparation (history windows, tensors) is inside the timed loop for both.

``ratio`` compares like with like: our DIN with the click task only against DeepCTR-Torch's
single-task DIN. ``ours_multitask_samples_per_s`` is the paper's three-task extractor (conversion and
add-to-cart towers run on the clicked rows), for reference.

DeepCTR-Torch checks PyPI for a newer version in a thread on import. The benchmark hides ``requests``
behind a stub during that import, so nothing goes to the network and nothing is printed to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import resource
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from contract.extractor import CheckpointConfig, PretrainSettings, TrainingWindow
from contract.ids import Vocabs
from contract.schema import TASKS, day_of
from trainer.data.dataset import EncodedLog
from trainer.models.batch import feature_batch
from trainer.models.checkpoint import LoadedExtractor
from trainer.models.strategies import build_extractor
from trainer.pretrain_steps import day_batches, extractor_config, train_step
from trainer.sharded import process_group, shard

BATCH = 2000


def _synthetic(scale: str) -> tuple[pd.DataFrame, str]:
    from trainer.data.synth import generate

    return generate(scale, seed=0, progress=False).super, f"synth:{scale}"


class _Contestant:
    """A training step over a cycle of batches, with its rows and wall/CPU time accumulated."""

    def __init__(self, step: Callable[[np.ndarray], None], batches: list[np.ndarray]) -> None:
        self.step = step
        self.batches = batches
        self.next = 0
        self.rows = self.steps = 0
        self.wall = self.cpu = 0.0

    def run_for(self, seconds: float) -> None:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < seconds:
            rows = self.batches[self.next % len(self.batches)]
            self.next += 1
            self.step(rows)
            self.rows += len(rows)
            self.steps += 1
        self.wall += time.perf_counter() - wall0
        self.cpu += time.process_time() - cpu0

    def result(self) -> dict[str, Any]:
        return {
            "samples_per_s": round(self.rows / self.wall, 1),
            "samples_per_cpu_s": round(self.rows / self.cpu, 1),
            "steps": self.steps,
            "seconds": round(self.wall, 2),
        }


def _interleaved(contestants: dict[str, _Contestant], seconds: float, slices: int) -> dict[str, Any]:
    """Alternate the contestants in ``slices`` rounds so a shared machine's load hits all alike."""
    for c in contestants.values():  # warm-up: first calls allocate and fault pages in
        c.step(c.batches[0])
        c.step(c.batches[1 % len(c.batches)])
    for _ in range(slices):
        for c in contestants.values():
            c.run_for(seconds / slices)
    return {name: c.result() for name, c in contestants.items()}


def _ours(
    log: EncodedLog, vocabs: Vocabs, batches: list[np.ndarray], tasks: tuple[str, ...], dense: bool = False
) -> _Contestant:
    """``keep pretrain``'s step (sharded TorchRec tables, fused row-wise Adagrad, DDP); ``dense``: the
    trainer before TorchRec (the same tables read as plain embeddings, one dense Adam on everything)."""
    torch.manual_seed(0)
    shape = extractor_config(vocabs, "full", tasks)
    model: torch.nn.Module
    optimizer: Any
    if dense:
        model = build_extractor(shape)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    else:
        sharded = shard(build_extractor(shape, materialize=False), 1e-3)
        model, optimizer = sharded.module, sharded.optimizer
    model.train()

    def step(rows: np.ndarray) -> None:
        train_step(model, optimizer, feature_batch(log, rows, tasks, with_pairs=True), tasks, 0.25)

    return _Contestant(step, batches)


@contextlib.contextmanager
def _offline_requests() -> Iterator[None]:
    """Stand in for ``requests`` while deepctr_torch imports, so its version check stays offline."""
    stub = types.ModuleType("requests")
    stub.codes = types.SimpleNamespace(ok=200)  # type: ignore[attr-defined]
    stub.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="{}")  # type: ignore[attr-defined]
    saved = sys.modules.get("requests")
    sys.modules["requests"] = stub
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("requests", None)
        else:
            sys.modules["requests"] = saved


def _deepctr(log: EncodedLog, vocabs: Vocabs, batches: list[np.ndarray]) -> _Contestant | str:
    try:
        with _offline_requests():
            inputs = importlib.import_module("deepctr_torch.inputs")
            models = importlib.import_module("deepctr_torch.models")
    except ImportError as err:
        return f"deepctr-torch not installed ({err}); pip install -e '.[bench]'"
    sizes = extractor_config(vocabs, "full", ("click",))
    sparse, varlen = inputs.SparseFeat, inputs.VarLenSparseFeat
    columns = [
        sparse("user", sizes.n_users, embedding_dim=48),
        sparse("item", sizes.n_items, embedding_dim=16),
        sparse("shop", sizes.n_shops, embedding_dim=16),
        sparse("cat", sizes.n_categories, embedding_dim=16),
        varlen(
            sparse("hist_item", sizes.n_items, embedding_dim=16, embedding_name="item"),
            50,
            "sum",
            length_name="seq_length",
        ),
        varlen(
            sparse("hist_cat", sizes.n_categories, embedding_dim=16, embedding_name="cat"),
            50,
            "sum",
            length_name="seq_length",
        ),
    ]
    torch.manual_seed(0)
    model = models.DIN(
        columns, ["item", "cat"], dnn_hidden_units=(512, 256, 128, 64), att_hidden_size=(64, 16), device="cpu"
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    index = model.feature_index
    width = max(end for _, end in index.values())
    model.train()

    def step(rows: np.ndarray) -> None:
        x = np.zeros((len(rows), width), dtype=np.float32)
        lengths = log.history.lengths(rows)
        hist_i = log.history.gather(rows, "item")
        hist_c = log.history.gather(rows, "category")
        # DeepCTR masks by length from the left: move each window's real entries to the front.
        shift = (np.arange(50)[None, :] + (50 - lengths)[:, None]) % 50
        for name, values in (
            ("user", log.user[rows]),
            ("item", log.item[rows]),
            ("shop", log.shop[rows]),
            ("cat", log.category[rows]),
            ("hist_item", np.take_along_axis(hist_i, shift, 1)),
            ("hist_cat", np.take_along_axis(hist_c, shift, 1)),
            ("seq_length", lengths),
        ):
            a, b = index[name]
            x[:, a:b] = values.reshape(len(rows), -1)
        y = torch.from_numpy(log.labels["click"][rows].astype(np.float32))
        pred = model(torch.from_numpy(x)).squeeze(-1)
        loss = F.binary_cross_entropy(pred, y) + model.get_regularization_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _Contestant(step, batches)


def _export_rate(df: pd.DataFrame, vocabs: Vocabs, last_day: int) -> dict[str, Any]:
    from trainer.export import export_loaded
    from trainer.models.towers import ServingExtractor

    torch.manual_seed(0)
    model = build_extractor(extractor_config(vocabs, "serving", TASKS))
    assert isinstance(model, ServingExtractor)
    ext = LoadedExtractor(
        path=Path("bench"),
        model=model.eval(),
        vocabs=vocabs,
        config=CheckpointConfig(
            extractor=model.cfg,
            train=PretrainSettings(TASKS, 0.25, 0, BATCH, 1e-3, "serving", TASKS),
            data=TrainingWindow(super="bench", run_days=(), holdout_days=(), first_day=0, last_day=last_day),
        ),
        progress={"state": "done"},
        metrics={},
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, stats = export_loaded(ext, df, Path(tmp) / "bundle", source=Path("bench"), progress=False)
        total = time.perf_counter() - start
    entries = stats.users + stats.items + stats.user_categories
    return {
        "users": stats.users,
        "items": stats.items,
        "user_categories": stats.user_categories,
        "users_per_s": round(stats.users_per_s, 1),
        "entries_per_s": round(entries / total, 1),
        "seconds": round(total, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with process_group():
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    seconds = 3.0 if quick else 30.0
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    df, source = _synthetic("tiny" if quick else "medium")
    days = day_of(df["ts"].to_numpy())
    vocabs = Vocabs.build(df)
    # Train on late days so that behaviour sequences are realistically full.
    train_days = np.unique(days)[-3:-1]
    rows = df[np.isin(days, train_days)].reset_index(drop=True)
    log = EncodedLog.encode(rows, vocabs, history_from=df[days <= train_days[-1]])
    batches = day_batches(log.day, 0, BATCH)[: 40 if quick else 400]
    prepared = time.perf_counter() - started
    contestants = {
        "ours": _ours(log, vocabs, batches, ("click",)),
        "ours_multitask": _ours(log, vocabs, batches, TASKS),
        "dense_multitask": _ours(log, vocabs, batches, TASKS, dense=True),
    }
    deepctr = _deepctr(log, vocabs, batches)
    if isinstance(deepctr, _Contestant):
        contestants["deepctr"] = deepctr
    runs: dict[str, Any] = _interleaved(contestants, seconds, 2 if quick else 6)
    if isinstance(deepctr, str):
        runs["deepctr"] = {"error": deepctr}
    ours, multi = runs["ours"], runs["ours_multitask"]
    train_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del log, rows
    export = _export_rate(df, vocabs, int(train_days[-1]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = runs["deepctr"].get("samples_per_s")
    return {
        "target": "train",
        "data": {
            "source": source,
            "rows": len(df),
            "users": len(vocabs.user.keys),
            "items": len(vocabs.item.keys),
            "prepare_s": round(prepared, 1),
        },
        "shape": {
            "batch_size": BATCH,
            "history": 50,
            "user_dim": 48,
            "id_dim": 16,
            "tower": [512, 256, 128, 64, 1],
            "attention": [64, 16],
            "threads": torch.get_num_threads(),
        },
        "ours_samples_per_s": ours["samples_per_s"],
        "ours_multitask_samples_per_s": multi["samples_per_s"],
        "deepctr_samples_per_s": base,
        "ratio": round(ours["samples_per_s"] / base, 2) if base else None,
        "ratio_multitask": round(multi["samples_per_s"] / base, 2) if base else None,
        # The sharded TorchRec trainer over the dense one it replaced (same run, same batches).
        "dense_multitask_samples_per_s": runs["dense_multitask"]["samples_per_s"],
        "sharded_over_dense": round(multi["samples_per_s"] / runs["dense_multitask"]["samples_per_s"], 3),
        "runs": runs,
        "export": export,
        "export_users_per_s": export["users_per_s"],
        # Data generation + both trainers (the pre-training budget: < 3 GiB), then with the export.
        "peak_rss_train_gib": round(train_peak / 2**30, 3),
        "peak_rss_gib": round(peak / 2**30, 3),
        "quick": quick,
    }
