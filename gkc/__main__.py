"""``python -m gkc``: the same as ``keep serve gkc`` (settings from ``GKC_*``)."""

from __future__ import annotations

from services.cli import run_command


def main() -> int:
    """Serve until SIGTERM/SIGINT; importing this module starts nothing."""
    from gkc.server import serve
    from gkc.settings import GkcSettings

    return run_command("gkc", lambda: serve(GkcSettings()))


if __name__ == "__main__":
    raise SystemExit(main())
