"""``keep serve gkc|ranker``: run a service in the foreground (settings from the environment)."""

from __future__ import annotations

import argparse
from typing import Any

from services.errors import InvalidArgument

#: The services ``keep serve`` runs.
SERVICES = ("gkc", "ranker")


def register(sub: Any) -> None:
    from gkc.settings import GkcSettings
    from ranker.settings import RankerSettings
    from services.settings import settings_help

    parser = sub.add_parser("serve", help="run a service (settings from GKC_* / RANKER_* env)")
    services = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    gkc = services.add_parser(
        "gkc",
        help="GKC: gRPC knowledge reads + REST version ops (docs/gkc.md)",
        description="GKC, the General Knowledge Center: gRPC BatchGet reads and the REST ops API "
        "(publish, versions, pins) in one process; without GKC_REDIS_URL it starts its own Redis "
        "under GKC_DATA_DIR. Settings come from the environment (docs/gkc.md).",
        epilog="settings (environment):\n" + settings_help(GkcSettings),
    )
    gkc.add_argument("--workers", type=int, default=None, help="gRPC server processes (GKC_WORKERS)")
    gkc.set_defaults(func=run_gkc)
    ranker = services.add_parser(
        "ranker",
        help="the ranker: gRPC Rank + REST /v1/rank over the models in RANKER_MODEL_DIR (docs/ranker.md)",
        description="The ranker scores a user's candidates with the plug-in models in RANKER_MODEL_DIR, "
        "reading knowledge from GKC at RANKER_GKC_ADDR; settings come from the environment "
        "(docs/ranker.md).",
        epilog="settings (environment):\n" + settings_help(RankerSettings),
    )
    ranker.add_argument(
        "--workers", type=int, default=None, help="threads running models (RANKER_MODEL_WORKERS)"
    )
    ranker.set_defaults(func=run_ranker)


def _workers(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers is None:
        return {}
    if args.workers < 1:
        raise InvalidArgument(f"--workers must be >= 1, got {args.workers}")
    return {"workers" if args.service == "gkc" else "model_workers": args.workers}


def run_gkc(args: argparse.Namespace) -> int:
    from gkc.server import serve
    from gkc.settings import GkcSettings

    return serve(GkcSettings(**_workers(args)))


def run_ranker(args: argparse.Namespace) -> int:
    from ranker.server import serve
    from ranker.settings import RankerSettings

    return serve(RankerSettings(**_workers(args)))
