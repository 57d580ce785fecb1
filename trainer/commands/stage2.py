"""``keep train``, ``keep evaluate``, ``keep experiment``: Stage 2 (paper §4.3, §6)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from contract.schema import TASKS
from services.errors import InvalidArgument
from trainer.commands.common import add_threads, set_threads
from trainer.coverage import DEFAULT_MIN_COVERAGE


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train the downstream model day by day with knowledge plugged in")
    t.add_argument("--train", required=True, help="sub-domain impression log")
    t.add_argument("--out", required=True, help="model artifact directory to write")
    _knowledge_args(t)
    t.add_argument("--knowledge-version", type=int, default=0, help="GKC version to pin (0 = active)")
    t.add_argument("--init", default=None, help="previous model artifact to warm-start from")
    t.add_argument("--task", default="click", choices=TASKS, help="label the model predicts")
    t.add_argument("--no-knowledge", action="store_true", help="train the base model (no plug-in)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    t.add_argument("--epochs", type=int, default=1, help="passes over the days (default 1)")
    t.add_argument("--batch-size", type=int, default=256, help="rows per batch")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--plugin-layer", type=int, default=1, help="MLP layer m that receives h^k (1-based)")
    _common(t)
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="GAUC/AUC of a model artifact on a log (prints JSON)")
    e.add_argument("--model", required=True, help="model artifact directory")
    e.add_argument("--test", required=True, help="impression log to score")
    _knowledge_args(e)
    e.add_argument("--train", default=None, help="earlier log whose clicks extend the histories")
    _common(e)
    e.set_defaults(func=run_evaluate)

    x = sub.add_parser("experiment", help="reproduce the paper's tables (results.json, report.md, plots)")
    x.add_argument("--super", required=True, dest="super_path", help="super-domain impression log")
    x.add_argument("--train", required=True, help="sub-domain training log (its last day picks the passes)")
    x.add_argument("--test", required=True, help="sub-domain test log (never used to choose anything)")
    x.add_argument("--out", required=True, help="folder for results.json, report.md and the plots")
    x.add_argument("--methods", default=None, help="comma-separated (default: all)")
    x.add_argument("--seeds", type=int, default=3, help="downstream seeds per method (mean ± std)")
    x.add_argument("--max-epochs", type=int, default=3, help="largest pass count tried on validation")
    x.add_argument(
        "--reuse-extractors", action="store_true", help="pre-train once (seed 0) for all seeds (faster)"
    )
    x.add_argument("--separate-extractors", action="store_true", help="one extractor per table variant")
    x.add_argument(
        "--sparse-lr-ratio",
        type=float,
        default=None,
        help="the extractors' id tables' learning rate as a multiple of the dense one (default 20)",
    )
    _common(x)
    x.set_defaults(func=run_experiment_cmd)

    mx = sub.add_parser(
        "experiment-merge",
        help="merge keep experiment runs of the same data (methods run side by side) into one report",
    )
    mx.add_argument("runs", nargs="+", help="--out folders of keep experiment runs (same data and seeds)")
    mx.add_argument("--out", required=True, help="folder for the merged results.json, report.md, plots")
    mx.set_defaults(func=run_experiment_merge_cmd)


def _knowledge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gkc", default=None, metavar="HOST:PORT", help="GKC's gRPC read address")
    p.add_argument("--bundle", default=None, help="local knowledge bundle instead of GKC (offline)")
    p.add_argument("--gkc-timeout", type=float, default=5.0, help="seconds per GKC read")
    p.add_argument(
        "--gkc-api",
        default=None,
        metavar="URL",
        help="GKC's REST API: hold a lease on the version read while running (token: env GKC_API_TOKEN)",
    )
    p.add_argument(
        "--min-coverage",
        type=float,
        default=DEFAULT_MIN_COVERAGE,
        help="refuse below this share of rows with user / item knowledge found",
    )


def _common(p: argparse.ArgumentParser) -> None:
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _knowledge(args: argparse.Namespace) -> Any:
    from trainer.pipeline import KnowledgeSource

    return KnowledgeSource(
        gkc=args.gkc,
        bundle=Path(args.bundle) if args.bundle else None,
        timeout_s=args.gkc_timeout,
        api_url=args.gkc_api,
        api_token=os.environ.get("GKC_API_TOKEN"),
    )


def run_train(args: argparse.Namespace) -> int:
    from trainer.pipeline import TrainConfig, TrainJob, train

    job = TrainJob(
        train=Path(args.train),
        out=Path(args.out),
        knowledge=None if args.no_knowledge else _knowledge(args),
        knowledge_version=args.knowledge_version,
        init=Path(args.init) if args.init else None,
        config=TrainConfig(
            task=args.task,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            plugin_layer=args.plugin_layer,
            progress=not args.no_progress,
            min_coverage=args.min_coverage,
        ),
        threads=args.threads,
    )
    summary = train(job)
    if summary:
        print(json.dumps(summary, sort_keys=True))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from trainer.pipeline import EvaluateJob, evaluate

    job = EvaluateJob(
        model=Path(args.model),
        test=Path(args.test),
        train=Path(args.train) if args.train else None,
        knowledge=_knowledge(args),
        threads=args.threads,
        progress=not args.no_progress,
        min_coverage=args.min_coverage,
    )
    print(json.dumps(evaluate(job), sort_keys=True))
    return 0


def run_experiment_cmd(args: argparse.Namespace) -> int:
    from trainer.experiment import ExperimentConfig, run_experiment
    from trainer.experiment_methods import METHOD_NAMES
    from trainer.train import TrainConfig

    set_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else METHOD_NAMES
    if args.seeds < 1:
        raise InvalidArgument("--seeds must be >= 1")
    cfg = ExperimentConfig(
        super_path=Path(args.super_path),
        train_path=Path(args.train),
        test_path=Path(args.test),
        out=Path(args.out),
        methods=methods,
        seeds=args.seeds,
        max_epochs=args.max_epochs,
        reuse_extractors=args.reuse_extractors,
        separate_extractors=args.separate_extractors,
        sparse_lr_ratio=args.sparse_lr_ratio,
        downstream=TrainConfig(progress=False),
        progress=not args.no_progress,
    )
    result = run_experiment(cfg)
    summary = {n: round(m["gauc"]["mean"], 4) for n, m in result["methods"].items()}
    print(
        json.dumps({"out": str(cfg.out), "gauc": summary, "wall_seconds": round(result["wall_seconds"], 1)})
    )
    return 0


def run_experiment_merge_cmd(args: argparse.Namespace) -> int:
    from trainer.experiment_merge import merge_runs

    result = merge_runs([Path(r) for r in args.runs], Path(args.out))
    summary = {n: round(m["gauc"]["mean"], 4) for n, m in result["methods"].items()}
    wall = round(result["wall_seconds"], 1)
    print(json.dumps({"out": str(args.out), "gauc": summary, "wall_seconds": wall}))
    return 0
