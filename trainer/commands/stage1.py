"""``keep pretrain`` and ``keep export`` (Stage 1: knowledge extraction, paper §4.2 and §5.2)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from contract.extractor import STRATEGIES
from contract.schema import parse_tasks


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train the knowledge extractor on a super-domain log (resumes an interrupted run)",
    )
    p.add_argument("--super", required=True, dest="super_path", help="super-domain impression log")
    p.add_argument("--out", required=True, help="checkpoint directory (rerun the same command to resume)")
    p.add_argument("--tasks", default="click,conversion,cart", help="comma-separated (default: all three)")
    p.add_argument("--alpha", type=float, default=0.25, help="weight of the pairwise loss (default 0.25)")
    p.add_argument("--strategy", choices=STRATEGIES, default="full", help="extractor form")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", default=None, help="previous checkpoint: continue on the days after its window")
    p.add_argument("--holdout-days", type=int, default=1, help="last days kept for the GAUC (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="batches between checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)

    e = sub.add_parser("export", help="write the knowledge bundle (K̂_u, K̂_i, K̂_uc) of a serving extractor")
    e.add_argument(
        "--extractor", required=True, help="checkpoint directory of keep pretrain --strategy serving"
    )
    e.add_argument("--out", default=None, help="bundle directory to create")
    e.add_argument(
        "--gkc-redis",
        default=None,
        metavar="URL",
        help="instead of --out: publish straight into GKC's Redis store as a new version (sharded "
        "over the ranks under torchrun)",
    )
    e.add_argument("--gkc-redis-cluster", action="store_true", help="the --gkc-redis URL is a Redis Cluster")
    e.add_argument(
        "--dtype",
        choices=["float32", "float16", "int8"],
        default="float32",
        help="how the vectors are stored (int8: per-row scale; docs/gkc.md, Stored dtypes)",
    )
    e.add_argument("--max-ready", type=int, default=5, help="ready versions kept (GKC_MAX_READY_VERSIONS)")
    e.add_argument("--super", default=None, dest="super_path", help="log for histories (default: as trained)")
    e.add_argument("--batch-size", type=int, default=4096)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_export)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n if n > 0 else os.cpu_count() or 1)


def _positive(name: str, value: int) -> None:
    from trainer.cli import CommandError

    if value <= 0:
        raise CommandError(f"{name} must be positive, got {value}")


def run_pretrain(args: argparse.Namespace) -> int:
    _positive("--batch-size", args.batch_size)
    _positive("--checkpoint-every", args.checkpoint_every)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun: share the cores between ranks
    _threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    from trainer.distributed import from_env, shutdown
    from trainer.pretrain import PretrainConfig, pretrain

    tasks = parse_tasks(args.tasks)
    config = PretrainConfig(
        super_path=Path(args.super_path),
        out=Path(args.out),
        tasks=tasks,
        alpha=args.alpha,
        strategy=args.strategy,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        init=Path(args.init) if args.init else None,
        holdout_days=args.holdout_days,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    group = from_env()  # a no-op outside torchrun
    try:
        result = pretrain(config, group=group)
    finally:
        shutdown(group)
    if not group.is_writer:
        return 0
    summary = {
        "out": str(result.out),
        "window": list(result.window),
        "trained_days": result.trained_days,
        "rows": result.rows,
        "seconds": round(result.seconds, 2),
        "metrics": result.metrics,
        "world_size": group.world,
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from trainer.cli import CommandError

    _positive("--batch-size", args.batch_size)
    _positive("--max-ready", args.max_ready)
    if (args.out is None) == (args.gkc_redis is None):
        raise CommandError("give --out DIR (a bundle) or --gkc-redis URL (publish into GKC's store)")
    if args.gkc_redis:
        return _export_to_gkc(args)
    _threads(args.threads)
    from trainer.export import export

    path, stats = export(
        args.extractor,
        args.out,
        super_path=args.super_path,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        dtype=args.dtype,
    )
    summary = {"bundle": str(path), "dtype": args.dtype, **stats.to_json()}
    print(json.dumps(summary, sort_keys=True))
    return 0


def _export_to_gkc(args: argparse.Namespace) -> int:
    """Every rank computes its span of the blocks and writes it; rank 0 begins and finalises the version."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    from contract.log import read_log
    from gkc.redis_store import RedisStore
    from trainer.distributed import from_env, shutdown
    from trainer.export import check_exportable
    from trainer.export_store import export_to_store
    from trainer.models.checkpoint import load_extractor

    ext = load_extractor(args.extractor)
    check_exportable(ext)
    source = Path(args.super_path or ext.config.data.super)
    df = read_log(source)
    store = RedisStore(args.gkc_redis, cluster=args.gkc_redis_cluster, timeout_s=10.0)
    group = from_env()  # a no-op outside torchrun
    try:
        result, stats = export_to_store(
            ext,
            df,
            store,
            source=source,
            group=group,
            batch_size=args.batch_size,
            max_ready=args.max_ready,
            progress=not args.no_progress,
            dtype=args.dtype,
        )
    finally:
        store.close()
        shutdown(group)
    if not group.is_writer:
        return 0
    summary = {
        "version": result.version,
        "retired": result.retired,
        "entries": result.entries,
        "world_size": group.world,
        **stats.to_json(),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0
