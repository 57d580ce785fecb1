"""``keep pretrain`` and ``keep export`` (Stage 1: knowledge extraction, paper §4.2 and §5.2)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contract.extractor import STRATEGIES
from contract.schema import parse_tasks
from trainer.commands.common import add_threads


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train the knowledge extractor on a super-domain log (resumes an interrupted run)",
    )
    p.add_argument(
        "--super",
        required=True,
        dest="super_path",
        help="super-domain impression log (file or dataset); a dataset from `keep data sequences` "
        "is streamed day by day",
    )
    p.add_argument("--out", required=True, help="checkpoint directory (rerun the same command to resume)")
    p.add_argument("--tasks", default="click,conversion,cart", help="comma-separated (default: all three)")
    p.add_argument("--alpha", type=float, default=0.25, help="weight of the pairwise loss (default 0.25)")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="extractor form: serving (what keep export needs) or full and its ablations for keep "
        "experiment (default: serving, or the --init checkpoint's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batch order")
    p.add_argument("--batch-size", type=int, default=2000, help="rows per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--sparse-lr-ratio",
        type=float,
        default=None,
        help="the id tables' row-wise Adagrad learning rate as a multiple of --lr (default 20)",
    )
    p.add_argument(
        "--user-column-shards",
        type=int,
        default=None,
        help="split the user table into this many column shards, spread over the torchrun ranks (with N "
        "ranks, N shards give each 1/N of it; width a multiple of 4: 1, 2, 3, 4, 6 or 12 for 48); "
        "default 2, or the --init run's",
    )
    p.add_argument("--init", default=None, help="previous checkpoint: continue on the days after its window")
    p.add_argument("--holdout-days", type=int, default=1, help="last days kept for the GAUC (default 1)")
    p.add_argument(
        "--passes",
        type=int,
        default=0,
        help="passes over the training days (default 0 = decide: one pass from --one-pass-rows training "
        "rows up, else early stopping on the last training day)",
    )
    p.add_argument("--max-passes", type=int, default=8, help="early stopping's budget (default 8)")
    p.add_argument(
        "--patience", type=int, default=2, help="passes without a gain before stopping (default 2)"
    )
    p.add_argument(
        "--one-pass-rows",
        type=int,
        default=1_000_000,
        help="training rows from which one pass is the default",
    )
    p.add_argument(
        "--rows-in-memory",
        type=int,
        default=1_000_000,
        help="a sequenced dataset: the most rows of a day a rank encodes at once; a bigger day is read "
        "in runs of batches (the same batches, more reads of its files)",
    )
    p.add_argument("--checkpoint-every", type=int, default=200, help="batches between checkpoints")
    add_threads(p)
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
    e.add_argument(
        "--base",
        type=int,
        default=None,
        metavar="V",
        help="write a delta over GKC version V: only the entries that are new or changed (docs/gkc.md, "
        "Delta versions); with --out it needs --base-bundle, with --gkc-redis the base is read from "
        "GKC's store (--changed seen or seen-pairs)",
    )
    e.add_argument(
        "--base-bundle",
        default=None,
        metavar="DIR",
        help="with --out: the bundle version V was published from",
    )
    e.add_argument(
        "--changed",
        choices=["moved", "seen", "seen-pairs"],
        default="moved",
        help="with --base: moved = the stored row differs (by more than --epsilon); seen = its user or item "
        "occurs in the days after the base's window; seen-pairs = as seen, a K̂_uc only where its (user, "
        "category) occurs in those days (default: moved)",
    )
    e.add_argument(
        "--epsilon",
        type=float,
        default=0.0,
        help="with --changed moved: relative L2 change an entry must exceed (default 0: any bit)",
    )
    e.add_argument(
        "--gkc-api",
        default=None,
        metavar="URL",
        help="GKC's REST API, where --base's identity is read (default: $GKC_API_URL, else the local port)",
    )
    e.add_argument("--max-ready", type=int, default=5, help="ready versions kept (GKC_MAX_READY_VERSIONS)")
    e.add_argument("--super", default=None, dest="super_path", help="log for histories (default: as trained)")
    e.add_argument("--batch-size", type=int, default=4096, help="entries per batch")
    add_threads(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_export)


def run_pretrain(args: argparse.Namespace) -> int:
    from trainer.pipeline import PretrainConfig, pretrain

    config = PretrainConfig(
        super_path=Path(args.super_path),
        out=Path(args.out),
        tasks=parse_tasks(args.tasks),
        alpha=args.alpha,
        strategy=args.strategy,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        sparse_lr_ratio=args.sparse_lr_ratio,
        user_column_shards=args.user_column_shards,
        init=Path(args.init) if args.init else None,
        holdout_days=args.holdout_days,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        passes=args.passes,
        max_passes=args.max_passes,
        patience=args.patience,
        one_pass_rows=args.one_pass_rows,
        rows_in_memory=args.rows_in_memory,
    )
    summary = pretrain(config, threads=args.threads)
    if summary.get("already_done"):
        print(
            f"{args.out}: this run already completed (days {summary['window'][0]}-{summary['window'][1]}); "
            f"nothing to do. To continue on newer days: keep pretrain --init {args.out} --out NEW",
            file=sys.stderr,
        )
    if summary:
        print(json.dumps(summary, sort_keys=True))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from trainer.pipeline import ExportConfig, export

    config = ExportConfig(
        extractor=Path(args.extractor),
        out=Path(args.out) if args.out else None,
        gkc_redis=args.gkc_redis,
        gkc_redis_cluster=args.gkc_redis_cluster,
        max_ready=args.max_ready,
        super_path=Path(args.super_path) if args.super_path else None,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not args.no_progress,
        dtype=args.dtype,
        base=args.base,
        base_bundle=Path(args.base_bundle) if args.base_bundle else None,
        changed=args.changed,
        epsilon=args.epsilon,
        gkc_api=args.gkc_api,
    )
    summary = export(config)
    if summary:
        print(json.dumps(summary, sort_keys=True))
    return 0
