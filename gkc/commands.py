"""CLI: ``keep publish BUNDLE --gkc URL`` and ``keep versions list|show|activate|delete`` (REST ops)."""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8081"


def register(sub: Any) -> None:
    pub = sub.add_parser("publish", help="publish a knowledge bundle to GKC as a new version")
    pub.add_argument("bundle", help="bundle directory (keep export --out)")
    _common(pub)
    pub.add_argument("--no-progress", action="store_true", help="no progress bar")
    pub.add_argument(
        "--dtype",
        choices=["float32", "float16", "int8"],
        default=None,
        help="store a float32 bundle at this dtype (default: as exported)",
    )
    pub.set_defaults(func=publish_command)

    ver = sub.add_parser("versions", help="list / show / activate / delete GKC knowledge versions")
    ver.add_argument("action", choices=["list", "show", "activate", "delete"])
    ver.add_argument("version", nargs="?", type=int, help="version number (show/activate/delete)")
    ver.add_argument("--all", action="store_true", help="(list) include staging and retiring versions")
    _common(ver)
    ver.set_defaults(func=versions_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gkc", default=DEFAULT_URL, help=f"GKC REST base URL (default {DEFAULT_URL})")
    parser.add_argument("--token", default=None, help="bearer token (default: env GKC_API_TOKEN)")
    parser.add_argument("--ca-file", default=None, help="PEM CA to trust for an https:// GKC (self-signed)")


def publish_command(args: argparse.Namespace) -> int:
    from gkc.client import GkcOpsClient

    ops = GkcOpsClient(args.gkc, args.token, ca_file=args.ca_file)
    try:
        result = ops.publish(args.bundle, progress=not args.no_progress, dtype=args.dtype)
    finally:
        ops.close()
    print(result["version"])
    return 0


def versions_command(args: argparse.Namespace) -> int:
    from gkc.client import GkcOpsClient
    from services.errors import InvalidArgument

    if args.action != "list" and args.version is None:
        raise InvalidArgument(f"keep versions {args.action} needs a version number")
    ops = GkcOpsClient(args.gkc, args.token, ca_file=args.ca_file)
    try:
        if args.action == "list":
            result: Any = ops.versions(include_all=args.all)
        elif args.action == "show":
            result = ops.version(args.version)
        elif args.action == "activate":
            result = ops.activate(args.version)
        else:
            result = ops.delete(args.version)
    finally:
        ops.close()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
