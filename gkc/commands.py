"""CLI: ``keep publish BUNDLE --gkc-api URL`` and ``keep versions list|show|activate|delete`` (REST ops).

GKC has two addresses: its gRPC read path (``host:port``, ``--gkc`` of train/evaluate) and its REST ops
API (``http(s)://host:port``, ``--gkc-api`` here). Each flag takes one of them; the wrong one is refused
with a line that names the right flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gkc.publishing import DEFAULT_GKC_API as DEFAULT_API_URL
from gkc.publishing import check_api_url
from services.errors import InvalidArgument


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
    ver.add_argument("action", choices=["list", "show", "activate", "delete"], help="what to do")
    ver.add_argument("version", nargs="?", type=int, help="version number (show/activate/delete)")
    ver.add_argument("--all", action="store_true", help="(list) include staging and retiring versions")
    ver.add_argument("--json", action="store_true", help="print GKC's JSON answer (for scripts)")
    _common(ver)
    ver.set_defaults(func=versions_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gkc-api",
        default=os.environ.get("GKC_API_URL") or DEFAULT_API_URL,
        metavar="URL",
        help=f"GKC's REST ops API, http(s):// (default: $GKC_API_URL, else {DEFAULT_API_URL})",
    )
    # --gkc is the gRPC read address everywhere else: here it only explains which flag to use
    parser.add_argument("--gkc", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--token", default=None, help="bearer token (default: env GKC_API_TOKEN)")
    parser.add_argument("--ca-file", default=None, help="PEM CA to trust for an https:// GKC (self-signed)")


def api_url(args: argparse.Namespace) -> str:
    """The REST URL, or a one-line refusal when a gRPC address (or ``--gkc``) was given."""
    if args.gkc is not None:
        raise InvalidArgument(
            f"keep {args.command} talks to GKC's REST API: use --gkc-api URL (e.g. {DEFAULT_API_URL}); "
            "--gkc is the gRPC address host:port that keep train/evaluate take"
        )
    return check_api_url(args.gkc_api)


def publish_command(args: argparse.Namespace) -> int:
    from gkc.publishing import PublishConfig, publish

    ca_file = Path(args.ca_file) if args.ca_file else None
    outcome = publish(
        PublishConfig(
            Path(args.bundle),
            api_url(args),
            args.token,
            ca_file,
            progress=not args.no_progress,
            dtype=args.dtype,
        )
    )
    print(outcome.describe(), file=sys.stderr)  # stdout: the number alone, for scripts
    print(outcome.version)
    return 0


def versions_command(args: argparse.Namespace) -> int:
    from gkc.client import GkcOpsClient

    if args.action != "list" and args.version is None:
        raise InvalidArgument(f"keep versions {args.action} needs a version number")
    ops = GkcOpsClient(api_url(args), args.token, ca_file=args.ca_file)
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
    if args.json or args.action != "list":
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(versions_table(result))
    return 0


def versions_table(versions: list[dict[str, Any]]) -> str:
    """One line per version: number, state, active mark, keys, counts, dtype, when, click GAUC."""
    import time

    header = ("version", "state", "active", "users", "items", "user-cats", "dtype", "updated", "click_gauc")
    rows = [header]
    for v in versions:
        manifest = v.get("manifest") or {}
        counts = manifest.get("counts") or {}
        gauc = (manifest.get("metrics") or {}).get("click", {}).get("gauc")
        updated = v.get("updated") or 0.0
        rows.append(
            (
                str(v.get("version", "")),
                str(v.get("state", "")),
                "*" if v.get("active") else "",
                str(counts.get("users", "")),
                str(counts.get("items", "")),
                str(counts.get("user_categories", counts.get("ucs", ""))),
                str(manifest.get("dtype", "")),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(updated)) if updated else "",
                f"{gauc:.4f}" if isinstance(gauc, int | float) else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
