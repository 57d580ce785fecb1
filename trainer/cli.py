"""``keep``: the single entry point (docs/architecture.md).

Every command module registers its own sub-parser and sets ``func``; heavy imports (torch, pandas,
redis) happen inside the command functions so ``keep serve gkc`` works in the GKC image, which has no
torch. Commands parse arguments into the typed configs of :mod:`trainer.pipeline` (or a service's
settings) and call it. Failures print one line ``keep: error: <reason>`` and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

#: One line per command group; each module defines ``register(subparsers)``.
COMMAND_MODULES = (
    "trainer.commands.data",
    "trainer.commands.bench",
    "trainer.commands.demo",
    "trainer.commands.serve",
    "trainer.commands.stage1",
    "trainer.commands.stage2",
    "gkc.commands",
    "ranker.commands",
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``(default: X)`` after every option whose default says something (not None/False); descriptions
    and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class KeepParser(argparse.ArgumentParser):
    """Every ``keep`` (sub)parser: defaults in ``--help``, and ``--log-level`` accepted anywhere."""

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--log-level",
            type=str.upper,
            choices=LOG_LEVELS,
            default="WARNING" if top else argparse.SUPPRESS,
            help="logging level (default: WARNING)",
        )


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("keep-recsys")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = KeepParser(prog="keep", description="KEEP: knowledge extraction and plugging", top=True)
    parser.add_argument("--version", action="version", version=f"keep {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from services.cli import run_command

    def call() -> int | None:
        args = build_parser().parse_args(argv)
        from services.logging import setup_logging

        setup_logging(args.log_level)
        result: int | None = args.func(args)
        return result

    return run_command("keep", call)


if __name__ == "__main__":
    raise SystemExit(main())
