"""``keep``: the single entry point (DESIGN §4).

Every command module registers its own sub-parser and sets ``func``; heavy imports (torch, pandas,
redis) happen inside the command functions so ``keep serve gkc`` works in the GKC image, which has no
torch. Failures print one line ``keep: error: <reason>`` and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from services.errors import KeepError

#: One line per command group; each module defines ``register(subparsers)``.
COMMAND_MODULES = (
    "trainer.commands.data",
    "trainer.commands.bench",
    "trainer.commands.demo",
    "trainer.commands.serve",
    "trainer.commands.stage1",
    "trainer.commands.stage2",
    "gkc.commands",
)


class CommandError(Exception):
    """A user-facing failure with a one-line reason (bad flag combination, missing file, ...)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keep", description="KEEP: knowledge extraction and plugging")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from services.logging import setup_logging

    setup_logging(args.log_level)
    try:
        result = args.func(args)
    except (KeepError, CommandError, FileNotFoundError) as err:
        print(f"keep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keep: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
