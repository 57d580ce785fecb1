"""``python -m ranker``: the same as ``keep serve ranker`` (settings from ``RANKER_*``)."""

from __future__ import annotations

from services.cli import run_command


def main() -> int:
    """Serve until SIGTERM/SIGINT; importing this module starts nothing."""
    from ranker.server import serve
    from ranker.settings import RankerSettings

    return run_command("ranker", lambda: serve(RankerSettings()))


if __name__ == "__main__":
    raise SystemExit(main())
