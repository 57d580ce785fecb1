"""Argument helpers the command modules share (cheap to import: no torch at module level)."""

from __future__ import annotations

import argparse


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process; 0 = the cores shared among torchrun's ranks",
    )


def set_threads(n: int) -> None:
    from trainer.distributed import set_threads as set_torch_threads

    set_torch_threads(n)
