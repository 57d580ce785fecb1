"""CLI: ``keep features LOG``: backfill the ranker's behaviour-sequence store (ranker/features.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Add an impression log's clicks to the ranker's behaviour-sequence store (each user keeps the last "
    "--max-len); streams the log in batches, rerunning adds nothing twice (ranker/features.py)."
)


def register(sub: Any) -> None:
    feat = sub.add_parser(
        "features",
        help="backfill the ranker's behaviour-sequence store (users' last clicks) from a log",
        description=DESCRIPTION,
    )
    _features_args(feat)


def features_main(argv: list[str] | None = None) -> int:
    """``python -m ranker.features``: the same command outside ``keep``."""
    import sys

    from services.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m ranker.features", description=DESCRIPTION)
    _features_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("ranker.features", lambda: features_command(args))


def _features_args(feat: argparse.ArgumentParser) -> None:
    feat.add_argument("log", help="sub-domain impression log (Parquet or CSV)")
    target = feat.add_mutually_exclusive_group()
    target.add_argument("--redis", help="the store's URL (default: RANKER_FEATURES_REDIS_URL)")
    target.add_argument(
        "--data-dir", type=Path, help="the ranker's RANKER_DATA_DIR: fill its embedded store (the default)"
    )
    feat.add_argument(
        "--max-len", type=int, default=None, help="clicks kept per user (RANKER_FEATURES_MAX_LEN)"
    )
    feat.add_argument(
        "--ttl-s", type=int, default=None, help="seconds a user's clicks live (RANKER_FEATURES_TTL_S)"
    )
    feat.add_argument("--batch-rows", type=int, default=100_000, help="log rows per batch (the memory bound)")
    feat.set_defaults(func=features_command)


def features_command(args: argparse.Namespace) -> int:
    from ranker.features import backfill
    from ranker.sequence_store import embedded
    from ranker.settings import RankerSettings

    settings = RankerSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    max_len = args.max_len or settings.features_max_len
    ttl_s = args.ttl_s or settings.features_ttl_s
    url = args.redis or (None if args.data_dir else settings.features_redis_url)
    if url is not None:
        stats = backfill(args.log, url, max_len=max_len, ttl_s=ttl_s, batch_rows=args.batch_rows)
    else:
        with embedded(settings.features_data_dir()) as url:
            stats = backfill(args.log, url, max_len=max_len, ttl_s=ttl_s, batch_rows=args.batch_rows)
    print(f"{args.log}: {stats['rows']} rows, {stats['clicks']} clicks into {url} (last {max_len} per user)")
    return 0
