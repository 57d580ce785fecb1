"""``python -m gkc``: the same as ``keep serve gkc`` (settings from ``GKC_*``)."""

from __future__ import annotations

import argparse
import sys

from gkc.server import serve
from services.errors import KeepError

if __name__ == "__main__":
    try:
        raise SystemExit(serve(argparse.Namespace(workers=None)))
    except KeepError as err:
        print(f"gkc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
