"""The impression-log contract in names: columns, tasks, days, the behaviour-sequence length.

A log row is one impression: ``user_id``, ``item_id``, ``category_id`` (int64 or string ids), ``ts``
(int64 unix seconds) and the ``click`` label, optionally ``shop_id``, ``session_id`` and the
``conversion`` / ``cart`` labels (0/1). :mod:`contract.log` reads and validates files against it.
Numpy only: ``gkc`` may import this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.errors import InvalidArgument

ID_COLUMNS = ("user_id", "item_id", "category_id")
OPTIONAL_ID_COLUMNS = ("shop_id", "session_id")
#: The tasks, each learned from the label column of the same name. ``click`` is always there.
TASKS = ("click", "conversion", "cart")
#: Tasks learned on every impression; the others are learned on the clicked rows only.
IMPRESSION_TASKS = ("click",)
LABEL_COLUMNS = ("click",)
OPTIONAL_LABEL_COLUMNS = tuple(t for t in TASKS if t not in LABEL_COLUMNS)
REQUIRED_COLUMNS = (*ID_COLUMNS, "ts", *LABEL_COLUMNS)
#: What a behaviour sequence is built from (the ranker's feature store reads only these).
HISTORY_COLUMNS = ("user_id", "item_id", "category_id", "ts", "click")
SECONDS_PER_DAY = 86_400
#: Behaviour-sequence length (a user's last clicks) of the extractor and the downstream model.
DEFAULT_MAX_LEN = 50
#: File suffixes of impression logs.
LOG_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def require_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else :class:`InvalidArgument` listing them."""
    if task not in TASKS:
        raise InvalidArgument(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"click,cart"`` → ``("click", "cart")``, each checked by :func:`require_task`."""
    return tuple(require_task(t.strip()) for t in text.split(",") if t.strip())


def day_of(ts: Any) -> np.ndarray:
    """Day number (unix seconds // 86400) of each timestamp."""
    return np.asarray(ts, dtype=np.int64) // SECONDS_PER_DAY
