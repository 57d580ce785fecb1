"""``keep train``, ``keep evaluate``, ``keep experiment``: Stage 2 (paper §4.3, §6)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from contract.schema import TASKS
from trainer.cli import CommandError


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train the downstream model day by day with knowledge plugged in")
    t.add_argument("--train", required=True, help="sub-domain impression log")
    t.add_argument("--out", required=True, help="model artifact directory to write")
    _knowledge_args(t)
    t.add_argument("--knowledge-version", type=int, default=0, help="GKC version to pin (0 = active)")
    t.add_argument("--init", default=None, help="previous model artifact to warm-start from")
    t.add_argument("--task", default="click", choices=TASKS)
    t.add_argument("--no-knowledge", action="store_true", help="train the base model (no plug-in)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=1, help="passes over the days (default 1)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
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
    x.add_argument("--super", required=True, dest="super_path")
    x.add_argument("--train", required=True)
    x.add_argument("--test", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--methods", default=None, help="comma-separated (default: all)")
    x.add_argument("--seeds", type=int, default=3)
    x.add_argument("--max-epochs", type=int, default=3, help="largest pass count tried on validation")
    x.add_argument(
        "--reuse-extractors", action="store_true", help="pre-train once (seed 0) for all seeds (faster)"
    )
    x.add_argument("--separate-extractors", action="store_true", help="one extractor per table variant")
    _common(x)
    x.set_defaults(func=run_experiment_cmd)


def _knowledge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gkc", default=None, help="GKC gRPC address host:port")
    p.add_argument("--bundle", default=None, help="local knowledge bundle instead of GKC (offline)")
    p.add_argument("--gkc-timeout", type=float, default=5.0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n if n > 0 else os.cpu_count() or 1)


def _reader(args: argparse.Namespace) -> Any:
    if args.bundle and args.gkc:
        raise CommandError("give --gkc or --bundle, not both")
    if args.bundle:
        from gkc.bundle_reader import BundleReader

        return BundleReader.open(args.bundle, version=getattr(args, "knowledge_version", 0) or 0)
    if args.gkc:
        from gkc.client import GkcClient  # type: ignore[import-not-found,unused-ignore]

        return GkcClient(args.gkc, timeout_s=args.gkc_timeout)
    return None


def gkc_provider(reader: Any, version: int, df: Any, progress: bool) -> Any:
    """Probe the reader once for the version's actual number and block dims, then pin both."""
    from contract.ids import canonical_ids
    from contract.knowledge import Dims, KnowledgeSchema
    from ranker.knowledge import manifest_schema
    from trainer.train import GkcKnowledge

    first = df.iloc[:1]
    lookup = reader.batch_get(
        str(canonical_ids(first["user_id"].to_numpy())[0]),
        canonical_ids(first["item_id"].to_numpy()).tolist(),
        canonical_ids(first["category_id"].to_numpy()).tolist(),
        version,
    )
    du, di, dc = lookup.user.shape[-1], lookup.items.shape[-1], lookup.ucs.shape[-1]
    manifest = getattr(reader, "manifest", None)
    if manifest is not None:
        schema = manifest_schema(manifest)
    else:
        schema = KnowledgeSchema.gkc(Dims(user=du, item=di, uc=dc), interaction=du == di)
    return GkcKnowledge(reader=reader, version=lookup.version or version, schema=schema, progress=progress)


def run_train(args: argparse.Namespace) -> int:
    from contract import artifact as artifact_mod
    from contract.log import read_log
    from trainer.distributed import from_env, shutdown
    from trainer.train import TrainConfig, task_rows, train

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun: share the cores between ranks
    _threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    df = read_log(args.train)
    reader = None if args.no_knowledge else _reader(args)
    if reader is None and not args.no_knowledge:
        raise CommandError("knowledge needs --gkc ADDR or --bundle DIR (or pass --no-knowledge)")
    providers: list[Any] = []
    if reader is not None:
        providers.append(gkc_provider(reader, args.knowledge_version, df, not args.no_progress))
    init = artifact_mod.load(args.init) if args.init else None
    cfg = TrainConfig(
        task=args.task,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        plugin_layer=args.plugin_layer,
        progress=not args.no_progress,
    )
    task_rows(df, args.task)  # fail early on a missing label column
    group = from_env()  # a no-op outside torchrun
    try:
        art = train(df, cfg, providers, init, train_file=str(args.train), group=group)
    finally:
        shutdown(group)
    if not group.is_writer:
        return 0
    artifact_mod.save(art, args.out)
    print(
        json.dumps(
            {
                "out": str(Path(args.out)),
                "rows": art.training.rows,
                "task": art.task,
                "knowledge": {k: v.to_json() for k, v in art.knowledge.items()},
                "warm_start": art.training.warm_start,
                "world_size": group.world,
            },
            sort_keys=True,
        )
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from contract import artifact as artifact_mod
    from contract.log import read_log
    from trainer.evaluate import evaluate
    from trainer.train import GkcKnowledge

    _threads(args.threads)
    art = artifact_mod.load(args.model)
    test = read_log(args.test)
    history = pd.concat([read_log(args.train), test], ignore_index=True) if args.train else test
    providers: list[Any] = []
    if art.knowledge:
        args.knowledge_version = art.pinned_version
        reader = _reader(args)
        if reader is None:
            raise CommandError(f"the model needs knowledge {sorted(art.knowledge)}: give --gkc or --bundle")
        manifest = getattr(reader, "manifest", None)
        for name, spec in art.knowledge.items():
            if manifest is not None:
                from ranker.knowledge import manifest_schema

                art.require_knowledge(name, manifest_schema(manifest))
            providers.append(
                GkcKnowledge(reader, spec.version, spec.schema, name=name, progress=not args.no_progress)
            )
    print(json.dumps(evaluate(art, test, providers, history_from=history), sort_keys=True))
    return 0


def run_experiment_cmd(args: argparse.Namespace) -> int:
    from trainer.experiment import ExperimentConfig, run_experiment
    from trainer.experiment_methods import METHOD_NAMES
    from trainer.train import TrainConfig

    _threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else METHOD_NAMES
    if args.seeds < 1:
        raise CommandError("--seeds must be >= 1")
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
        downstream=TrainConfig(progress=False),
        progress=not args.no_progress,
    )
    result = run_experiment(cfg)
    summary = {n: round(m["gauc"]["mean"], 4) for n, m in result["methods"].items()}
    print(
        json.dumps({"out": str(cfg.out), "gauc": summary, "wall_seconds": round(result["wall_seconds"], 1)})
    )
    return 0
