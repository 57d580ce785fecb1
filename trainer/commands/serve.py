"""``keep serve gkc|ranker``: run a service in the foreground (settings from the environment)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: service → "module:function"; the function takes the parsed args and blocks until stopped.
SERVICES: dict[str, str] = {"gkc": "gkc.server:serve", "ranker": "ranker.server:serve"}


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="run a service (settings from GKC_* / RANKER_* env)")
    parser.add_argument("service", choices=sorted(SERVICES) or ["none"], help="which service")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gkc: gRPC server processes (GKC_WORKERS); ranker: model threads (RANKER_MODEL_WORKERS)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module, _, func = SERVICES[args.service].partition(":")
    return int(getattr(importlib.import_module(module), func)(args) or 0)
