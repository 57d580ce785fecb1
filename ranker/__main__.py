"""``python -m ranker``: the same as ``keep serve ranker`` (settings from ``RANKER_*``)."""

from ranker.server import serve

raise SystemExit(serve())
