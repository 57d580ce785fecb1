"""``python -m gkc``: the same as ``keep serve gkc`` (settings from ``GKC_*``)."""

from __future__ import annotations

from services.cli import run_command

if __name__ == "__main__":
    from gkc.server import serve
    from gkc.settings import GkcSettings

    raise SystemExit(run_command("gkc", lambda: serve(GkcSettings())))
