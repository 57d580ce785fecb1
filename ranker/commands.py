"""CLI: ``keep features LOG OUT``: the ranker's behaviour-sequence store, written beside a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from contract.schema import DEFAULT_MAX_LEN

DESCRIPTION = (
    "Each user's last --max-len clicks of an impression log, in the file the ranker reads beside each "
    "model (ranker/features.py)."
)


def register(sub: Any) -> None:
    feat = sub.add_parser(
        "features",
        help="write the users' last clicks (features.npz) beside a model, for keep serve ranker",
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
    feat.add_argument("out", help="a model directory (writes features.npz there) or an output file")
    feat.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="clicks kept per user")
    feat.set_defaults(func=features_command)


def features_command(args: argparse.Namespace) -> int:
    from ranker.features import FEATURES_FILE, build_store
    from services.errors import InvalidArgument

    if args.max_len < 1:
        raise InvalidArgument(f"--max-len must be >= 1, got {args.max_len}")
    out = Path(args.out)
    if out.is_dir():
        out = out / FEATURES_FILE
    elif not out.parent.is_dir():
        raise InvalidArgument(f"{out.parent}: no such directory (give a model directory or a file in one)")
    store = build_store(args.log, args.max_len)
    store.save(out)
    print(f"{out}: {len(store)} users, {len(store.items)} clicks (last {args.max_len} per user)")
    return 0
