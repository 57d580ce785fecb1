"""``python -m ranker``: the same as ``keep serve ranker`` (settings from ``RANKER_*``)."""

from __future__ import annotations

from services.cli import run_command

if __name__ == "__main__":
    from ranker.server import serve
    from ranker.settings import RankerSettings

    raise SystemExit(run_command("ranker", lambda: serve(RankerSettings())))
