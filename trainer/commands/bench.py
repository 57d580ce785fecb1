"""``keep bench gkc|publish|delta|ranker|train|metrics|scale``: one JSON object on stdout per run.

Each target is a module of the top-level ``bench`` package, imported only when it runs: no runtime
package imports ``bench``. This module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

#: target → "module:function"; the function takes the parsed args and returns a JSON-able dict.
TARGETS: dict[str, str] = {
    "train": "bench.train:run",
    "metrics": "bench.metrics:run",
    "gkc": "bench.gkc:run",
    "publish": "bench.publish:run",
    "delta": "bench.delta:run",
    "ranker": "bench.ranker:run",
    "scale": "bench.scale:run",
}


def register(sub: Any) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and print one JSON object")
    parser.add_argument("target", choices=sorted(TARGETS) or ["none"], help="what to measure")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for tests and CI")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--cluster", action="store_true", help="(gkc) run against a local Redis Cluster")
    parser.add_argument(
        "--large",
        action="store_true",
        help="(scale) medium and large (>= 50M rows; the streaming steps only) instead of small and medium",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module, _, func = TARGETS[args.target].partition(":")
    result = getattr(importlib.import_module(module), func)(args)
    text = json.dumps(result, sort_keys=True)
    print(text)
    sys.stdout.flush()
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0
