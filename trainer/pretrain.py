"""Stage 1 pre-training loop (paper §4.2, §6.1): days ascending, shuffled within a day; one pass on
large data, a number of passes picked by early stopping on small data (``trainer.pretrain_passes``).

Order and batches are a pure function of (rows of each day, seed): each day is permuted by its own
generator seeded with ``(seed, day)`` and cut into batches that never cross a day boundary. Hence a
run over days 1-4 and a run over days 1-2 continued with ``--init`` over days 3-4 see exactly the same
batches, and a resumed run skips exactly the batches its checkpoint already holds: both give the
parameters of one uninterrupted run (tested).

Vocabulary on continuation: the previous vocabulary grows by the ids first seen in the new days; they
get rows of their own appended to the tables (:mod:`trainer.models.growth`), old ids keep theirs, so
they are trained and exported, never a silent OOV. When the new days bring no new id the tables are
unchanged and the equality above holds bit for bit.

Hold-out: the last ``holdout_days`` days of the super-domain file are not trained on; the extractor's
per-task GAUC and AUC on them is stored in ``metrics.json`` (and later in the bundle manifest), beside
``passes`` (how many and why) and, when early stopping ran, ``validation``: the per-task metrics of its
best pass on its held-out super-domain day. So ``metrics.json`` is never empty, even with
``holdout_days=0`` (what ``keep experiment`` uses).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from contract.extractor import CheckpointConfig, PretrainSettings, TrainingWindow
from contract.ids import Vocabs
from contract.log import tasks_present
from contract.schema import TASKS
from services.errors import Conflict, InvalidArgument
from trainer.data.source import LogSource, open_source
from trainer.distributed import DataParallel
from trainer.models.batch import feature_batch
from trainer.models.checkpoint import (
    CONFIG,
    METRICS,
    STATE,
    VOCABS,
    CheckpointError,
    load_run,
    load_state,
    require_sharded_state,
    save_state,
    write_json,
)
from trainer.models.growth import grow_state
from trainer.models.strategies import build_extractor
from trainer.pretrain_passes import PassPlan, choose_passes
from trainer.pretrain_steps import (
    AUTO,
    DEFAULT_STRATEGY,
    PretrainConfig,
    extractor_config,
    score_holdout,
    split_days,
    train_step,
)
from trainer.sharded import (
    Sharded,
    checkpoint_state,
    local_shards,
    process_group,
    shard,
    unsharded,
)

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    out: Path
    window: tuple[int, int]
    trained_days: list[int]
    rows: int
    batches: int
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    completed: bool = True
    #: The run had already completed before this call; nothing was trained.
    already_done: bool = False
    #: Each rank's shards of the id tables (:func:`trainer.sharded.local_shards`), in rank order.
    shards: list[dict[str, list[list[int]]]] = field(default_factory=list)


def _train_tasks(requested: Sequence[str], columns: list[str], source: str) -> tuple[str, ...]:
    unknown = [t for t in requested if t not in TASKS]
    if unknown:
        raise InvalidArgument(f"unknown task(s) {unknown}; expected a subset of {', '.join(TASKS)}")
    present = tasks_present(pd.DataFrame(columns=columns))
    skipped = [t for t in requested if t not in present]
    if skipped:
        log.warning("%s: no %s column; skipping task(s) %s", source, "/".join(skipped), skipped)
    return tuple(t for t in TASKS if t in requested and t in present)


@dataclass
class _Plan:
    """What this invocation trains: fresh, resumed, or continued from a previous checkpoint."""

    sharded: Sharded
    vocabs: Vocabs
    config: CheckpointConfig
    run_days: list[int]
    done: int = 0
    #: Passes a resumed run was started with (0: a new run, decided by ``choose_passes``).
    passes: int = 0


def _plan(
    cfg: PretrainConfig, data: LogSource, train_days: list[int], holdout: list[int], writer: bool = True
) -> _Plan:
    source = str(cfg.super_path)
    tasks = _train_tasks(cfg.tasks, data.columns(), source)
    if "click" not in tasks:
        raise InvalidArgument("the click task is required (--tasks must include click)")
    out = cfg.out
    if (out / STATE).is_file():
        return _resume_plan(cfg, tasks)
    if cfg.init is not None:
        prev = load_run(cfg.init)
        if prev.progress.get("state") != "done":
            raise Conflict(f"{cfg.init}: that run has not completed; resume it first")
        first, last = prev.window
        run_days = [d for d in train_days if d > last]
        if not run_days:
            raise InvalidArgument(f"{source}: no training day after day {last} (the end of {cfg.init})")
        vocabs = data.vocabs(run_days, init=prev.vocabs)
        user_shards = prev.config.train.user_column_shards
        if cfg.user_column_shards not in (None, user_shards):
            raise InvalidArgument(
                f"--user-column-shards {cfg.user_column_shards} does not match {cfg.init} ({user_shards} "
                "shards: its row-wise Adagrad state is per row and shard); leave it out to continue with "
                "the checkpoint's"
            )
        state = require_sharded_state(prev.path, load_state(prev.path, mmap=True, pieces=True))
        model_cfg, state, added = grow_state(prev.config.extractor, state, vocabs, seed=cfg.seed)
        if any(added.values()):
            log.info("%s: new ids in days %s get rows of their own: %s", source, run_days, added)
        sharded = shard(
            build_extractor(model_cfg, materialize=False),
            cfg.lr,
            sparse_lr_ratio=cfg.sparse_lr_ratio,
            user_shards=user_shards,
            state=state,
        )
        model_tasks = model_cfg.tasks
        if cfg.strategy is not None and model_cfg.strategy != cfg.strategy:
            raise InvalidArgument(
                f"--strategy {cfg.strategy} does not match {cfg.init} (strategy {model_cfg.strategy}); "
                "leave --strategy out to continue with the checkpoint's"
            )
        strategy = model_cfg.strategy
        window_first = first
    else:
        run_days = train_days
        vocabs = data.vocabs(run_days)
        torch.manual_seed(cfg.seed)
        strategy = cfg.strategy or DEFAULT_STRATEGY
        model = build_extractor(extractor_config(vocabs, strategy, tasks, cfg.max_len), materialize=False)
        user_shards = cfg.fresh_user_shards
        sharded = shard(model, cfg.lr, sparse_lr_ratio=cfg.sparse_lr_ratio, user_shards=user_shards)
        model_tasks = tasks
        window_first = run_days[0]
    config = CheckpointConfig(
        extractor=sharded.extractor.cfg,
        train=PretrainSettings(
            tasks=tasks,
            alpha=cfg.alpha,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            strategy=strategy,
            model_tasks=tuple(model_tasks),
            sparse_lr_ratio=cfg.sparse_lr_ratio,
            user_column_shards=user_shards,
        ),
        data=TrainingWindow(
            super=str(cfg.super_path.resolve()),
            run_days=tuple(run_days),
            holdout_days=tuple(holdout),
            first_day=window_first,
            last_day=run_days[-1],
            init_from=str(cfg.init.resolve()) if cfg.init else None,
        ),
    )
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG, config.to_json())
        vocabs.save(out / VOCABS)
    return _Plan(sharded, vocabs, config, run_days)


def _resume_plan(cfg: PretrainConfig, tasks: tuple[str, ...]) -> _Plan:
    prev = load_run(cfg.out)
    saved = prev.config.train
    asked = {
        "tasks": tasks,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "sparse_lr_ratio": cfg.sparse_lr_ratio,
        "user_column_shards": cfg.user_column_shards or saved.user_column_shards,
    }
    diff = [k for k, v in asked.items() if getattr(saved, k) != v]
    if diff or (cfg.strategy is not None and saved.strategy != cfg.strategy):
        raise CheckpointError(f"{cfg.out}: cannot resume with different {diff or ['strategy']}")
    state = require_sharded_state(cfg.out, load_state(cfg.out, mmap=True, pieces=True))
    sharded = shard(
        build_extractor(prev.config.extractor, materialize=False),
        cfg.lr,
        sparse_lr_ratio=cfg.sparse_lr_ratio,
        user_shards=saved.user_column_shards,
        state=state,
    )
    run_days = list(prev.config.data.run_days)
    done = int(prev.progress["batches_done"])
    return _Plan(sharded, prev.vocabs, prev.config, run_days, done, int(prev.progress.get("passes", 1)))


def pretrain(
    cfg: PretrainConfig, *, stop_after_batches: int | None = None, group: DataParallel | None = None
) -> PretrainResult:
    """Train (or resume, or continue with ``cfg.init``) an extractor and write its checkpoint dir.

    ``stop_after_batches`` ends the call after that many batches without a final checkpoint, like a
    process killed mid-run (for tests); rerunning with the same arguments resumes.
    ``group`` (under torchrun, see ``trainer.distributed``): each rank trains on its shard of every
    batch, the id tables sharded over the ranks (:mod:`trainer.sharded`); only rank 0 writes the
    checkpoint, metrics and progress bar. One process is a world of one: the same sharded path.
    """
    with process_group():
        return _pretrain(cfg, stop_after_batches, group or DataParallel())


def _save(out: Path, sharded: Sharded, progress: dict[str, Any]) -> bool:
    """Every rank writes its table pieces, rank 0 the checkpoint naming them; True on rank 0."""
    state = checkpoint_state(sharded, out, int(progress["batches_done"]))
    if state is not None:
        save_state(out, state, progress)
    return state is not None


def _pretrain(cfg: PretrainConfig, stop_after_batches: int | None, group: DataParallel) -> PretrainResult:
    started = time.perf_counter()
    finished = _finished_run(cfg)
    if finished is not None:
        return finished
    if cfg.rows_in_memory < 1:
        raise InvalidArgument(f"--rows-in-memory must be >= 1, got {cfg.rows_in_memory}")
    data = open_source(cfg.super_path)  # a sequenced dataset streams day by day, else in memory
    train_days, holdout = split_days(data.days(), cfg.holdout_days, str(cfg.super_path))
    plan = _plan(cfg, data, train_days, holdout, writer=group.is_writer)
    group.barrier()  # every rank has read the resume state before rank 0 writes a new one
    shards = group.gather_objects(local_shards(plan.sharded))
    tasks = plan.config.train.tasks
    passes = _passes(cfg, data, plan, tasks, group)
    stream = data.batches(
        plan.run_days,
        plan.vocabs,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        passes=passes.passes,
        max_len=cfg.max_len,
        group=group,
        rows_in_memory=cfg.rows_in_memory,
    )
    sizes = stream.sizes
    progress: dict[str, Any] = {
        "state": "running",
        "passes": passes.passes,
        "run_days": plan.run_days,
        "batches_done": plan.done,
        "batches_total": len(sizes),
        "rows_done": int(sum(sizes[: plan.done])),
    }
    rows_left = sum(sizes) - progress["rows_done"]
    bar = tqdm(
        total=rows_left,
        unit="rows",
        unit_scale=True,
        desc=f"pretrain {plan.config.train.strategy} days {plan.run_days[0]}-{plan.run_days[-1]}",
        file=sys.stderr,
        disable=not (cfg.progress and group.is_writer),
        dynamic_ncols=True,
    )
    model, optimizer = plan.sharded.module, plan.sharded.optimizer
    model.train()
    ema: dict[str, float] = {}
    ran = 0
    try:
        for index, (encoded, rows) in enumerate(stream.iter_from(plan.done), start=plan.done):
            if stop_after_batches is not None and ran >= stop_after_batches:
                bar.close()
                return PretrainResult(
                    cfg.out,
                    _window(plan),
                    plan.run_days,
                    progress["rows_done"],
                    ran,
                    time.perf_counter() - started,
                    completed=False,
                )
            batch = feature_batch(encoded, rows, tasks, with_pairs=cfg.alpha > 0)
            losses = train_step(model, optimizer, batch, tasks, cfg.alpha, group)
            ran += 1
            progress["batches_done"] = index + 1
            progress["rows_done"] += sizes[index]
            for head, value in losses.items():
                ema[head] = value if head not in ema else 0.9 * ema[head] + 0.1 * value
            bar.update(sizes[index])
            if index % 10 == 0:
                bar.set_postfix({h: f"{v:.4f}" for h, v in ema.items()}, refresh=False)
            if (index + 1) % cfg.checkpoint_every == 0:
                _save(cfg.out, plan.sharded, progress)
    except KeyboardInterrupt:
        if not group.enabled:  # gathering is collective: the other ranks may be gone
            _save(cfg.out, plan.sharded, progress)
        raise
    finally:
        bar.close()
    progress["state"] = "done"
    progress["final_loss"] = ema
    metrics: dict[str, Any] = {}
    wrote = _save(cfg.out, plan.sharded, progress)
    final = unsharded(plan.sharded, load_state(cfg.out, mmap=True, pieces=True)) if wrote else None
    if final is not None:
        metrics = (
            score_holdout(final, data.holdout(plan.vocabs, holdout, cfg.max_len, cfg.rows_in_memory), tasks)
            if holdout
            else {}
        )
        metrics["passes"] = passes.to_json()
        if passes.validation:
            metrics["validation"] = passes.validation
        if not holdout and not passes.validation:
            metrics["held_out"] = "none: --holdout-days 0 and no early stopping (every day was trained on)"
        write_json(cfg.out / METRICS, metrics)
    group.barrier()  # the others wait for rank 0's checkpoint before they exit
    return PretrainResult(
        cfg.out,
        _window(plan),
        plan.run_days,
        progress["rows_done"],
        ran,
        time.perf_counter() - started,
        metrics,
        shards=shards,
    )


def _finished_run(cfg: PretrainConfig) -> PretrainResult | None:
    """A rerun of a completed run (same ``--out``): report it instead of training again."""
    if not (cfg.out / STATE).is_file():
        return None
    prev = load_run(cfg.out)
    if prev.progress.get("state") != "done":
        return None
    return PretrainResult(
        cfg.out,
        prev.window,
        list(prev.config.data.run_days),
        int(prev.progress.get("rows_done", 0)),
        0,
        0.0,
        prev.metrics,
        already_done=True,
    )


def _passes(
    cfg: PretrainConfig, data: LogSource, plan: _Plan, tasks: tuple[str, ...], group: DataParallel
) -> PassPlan:
    """This run's passes: a resumed run keeps its own; under torchrun AUTO is one pass (the ranks
    would each run the early-stopping search)."""
    if cfg.passes < 0:
        raise InvalidArgument(f"--passes must be >= 0 (0 = decide from the data), got {cfg.passes}")
    if plan.passes:
        return PassPlan(plan.passes, "resumed: the passes the run was started with")
    if group.enabled and cfg.passes == AUTO:
        return PassPlan(1, "data-parallel run: one pass unless --passes is given")
    return choose_passes(cfg, data, plan.run_days, tasks, fresh=cfg.init is None)


def _window(plan: _Plan) -> tuple[int, int]:
    return plan.config.window
