"""Backfill: fill the behaviour-sequence store (``ranker.sequence_store``) from an impression log.

``keep features LOG [--redis URL | --data-dir DIR]`` (or ``python -m ranker.features``) streams the log
(a file or a dataset directory, in Parquet record batches or CSV chunks of ``--batch-rows``:
:func:`contract.log.iter_log`; memory is one batch, whatever the log's size), keeps its clicks and
adds each as ``(ts, row number, item, category)`` to its user's set, trimmed to the newest
``--max-len``. The row number is the click's arrival order, so clicks in the same second keep file
order, as the trainer's stable sort does; the request window is then cut by the shared rule
(:mod:`contract.sequences`), and the ranker's histories equal ``keep evaluate``'s for rows after the log.

Rerunning over the same log changes nothing (same members). Without ``--redis`` the target is
``RANKER_FEATURES_REDIS_URL``, else the ranker's embedded store under ``RANKER_DATA_DIR`` (the running
ranker's, or one started for the backfill and stopped after it, its data kept for the ranker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import redis

from contract.ids import canonical_ids
from contract.log import DataError, iter_log
from contract.schema import DEFAULT_MAX_LEN, HISTORY_COLUMNS
from ranker.history import SEP
from ranker.sequence_store import DEFAULT_TTL_S, backfill_batch
from services.errors import InvalidArgument, Unavailable

BATCH_ROWS = 100_000


def iter_log_batches(
    path: str | os.PathLike[str], batch_rows: int = BATCH_ROWS, columns: Sequence[str] = HISTORY_COLUMNS
) -> Iterator[pd.DataFrame]:
    """Validated batches of at most ``batch_rows`` rows of a log (a file or a dataset directory), in
    :func:`contract.log.iter_log` order."""
    for _, batch in iter_log(path, columns, batch_rows):
        yield batch


def clicks_of(batch: pd.DataFrame, first_row: int) -> Iterator[tuple[int, str, str, str, float]]:
    """``(row number, user, item, category, ts)`` of the batch's clicks (canonical string ids)."""
    clicked = batch["click"].to_numpy().astype(bool)
    rows = np.flatnonzero(clicked) + first_row
    cols = [canonical_ids(batch[c].to_numpy()[clicked]) for c in ("user_id", "item_id", "category_id")]
    for col, what in zip(cols, ("user_id", "item_id", "category_id"), strict=True):
        if any(SEP in v for v in col.tolist()):
            raise DataError(f"column '{what}' holds an id with the reserved character \\x1f")
    ts = batch["ts"].to_numpy()[clicked].astype(np.float64)
    return zip(rows.tolist(), *(c.tolist() for c in cols), ts.tolist(), strict=True)


def backfill(
    log_path: str | os.PathLike[str],
    url: str,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    ttl_s: int = DEFAULT_TTL_S,
    batch_rows: int = BATCH_ROWS,
) -> dict[str, int]:
    """Add every click of the log to the store at ``url``; returns rows read and clicks sent."""
    if max_len < 1 or batch_rows < 1 or ttl_s < 1:
        raise InvalidArgument("--max-len, --batch-rows and --ttl-s must be >= 1")
    client = redis.Redis.from_url(url, socket_timeout=30)
    rows = clicks = 0
    try:
        for batch in iter_log_batches(log_path, batch_rows):
            clicks += backfill_batch(client, clicks_of(batch, rows), max_len=max_len, ttl_s=ttl_s)
            rows += len(batch)
    except (redis.RedisError, OSError) as err:
        raise Unavailable(f"feature store at {url}: {type(err).__name__}: {err}") from err
    finally:
        client.close()
    return {"rows": rows, "clicks": clicks}


def main(argv: list[str] | None = None) -> int:
    """``python -m ranker.features LOG [--redis URL | --data-dir DIR]``: the same as ``keep features``."""
    from ranker.commands import features_main

    return features_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
