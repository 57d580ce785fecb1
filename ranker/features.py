"""The behaviour-sequence feature source: each user's last N clicks (item, category), oldest first.

The downstream model attends over the user's clicked items. Offline, ``trainer.data.sequences`` builds
those windows from the log strictly before each row's ``ts``; online, the ranker needs the same window
"as of now", i.e. the user's last N clicks in the sub-domain log. :class:`SequenceStore` is that window
for every user, in canonical string ids (each model maps them through its own vocabulary per request).

Embedded default (no feature service): a store file ``features.npz`` built from the sub-domain log with
:func:`build_store` (``keep features LOG OUT``). The ranker looks for it

1. beside each model, ``<artifact>/features.npz``, so a model and the histories it was trained on are
   swapped together; else
2. at ``RANKER_FEATURES_PATH``: a ``features.npz``, or a Parquet/CSV impression log read at start
   (pandas needed, which the trainer image has); else
3. nowhere: every user has an empty history (the model still answers; the log says so once).

Order matches the trainer: clicks sorted by (user, ts), ties kept in file order (stable sort), last
``max_len`` kept. So for rows after the log's last click, online and offline histories are identical.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from contract.schema import DEFAULT_MAX_LEN, HISTORY_COLUMNS
from services.errors import InvalidArgument

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npz"
FORMAT_VERSION = 1
_EMPTY = np.zeros(0, dtype="<U1")


@dataclass(frozen=True)
class SequenceStore:
    #: Sorted unique user ids; user ``users[k]``'s clicks are ``items[offsets[k]:offsets[k+1]]``.
    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    max_len: int
    source: str = ""
    _row: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.users) + 1 or len(self.items) != len(self.categories):
            raise InvalidArgument(f"feature store {self.source or '?'}: inconsistent array lengths")
        self._row.update({u: k for k, u in enumerate(self.users.tolist())})

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls, source: str = "none") -> SequenceStore:
        return cls(_EMPTY, np.zeros(1, dtype=np.int64), _EMPTY, _EMPTY, max_len=0, source=source)

    def history(self, user_id: str) -> tuple[list[str], list[str]]:
        """The user's clicked items and their categories, oldest first (empty for an unknown user)."""
        k = self._row.get(user_id)
        if k is None:
            return [], []
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        return self.items[a:b].tolist(), self.categories[a:b].tolist()

    @classmethod
    def from_clicks(
        cls,
        user_ids: Any,
        item_ids: Any,
        category_ids: Any,
        ts: Any,
        click: Any,
        *,
        max_len: int = DEFAULT_MAX_LEN,
        source: str = "",
    ) -> SequenceStore:
        """The last ``max_len`` clicks per user of an impression log given as columns."""
        clicked = np.asarray(click).astype(bool)
        users = canonical_ids(np.asarray(user_ids)[clicked])
        items = canonical_ids(np.asarray(item_ids)[clicked])
        cats = canonical_ids(np.asarray(category_ids)[clicked])
        times = np.asarray(ts, dtype=np.int64)[clicked]
        uniq, codes = np.unique(users, return_inverse=True)
        order = np.lexsort((times, codes))  # stable: equal (user, ts) keep file order, like the trainer
        codes, items, cats = codes[order], items[order], cats[order]
        counts = np.bincount(codes, minlength=len(uniq))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        pos = np.arange(len(codes)) - starts[codes]
        keep = pos >= counts[codes] - max_len
        kept = np.minimum(counts, max_len)
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        return cls(uniq, offsets, items[keep], cats[keep], max_len=max_len, source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
        np.savez(
            tmp,
            format_version=np.int64(FORMAT_VERSION),
            max_len=np.int64(self.max_len),
            users=self.users,
            offsets=self.offsets,
            items=self.items,
            categories=self.categories,
        )
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SequenceStore:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if int(data["format_version"]) != FORMAT_VERSION:
                    raise InvalidArgument(f"{path}: feature store format {int(data['format_version'])}")
                return cls(
                    users=data["users"],
                    offsets=data["offsets"].astype(np.int64),
                    items=data["items"],
                    categories=data["categories"],
                    max_len=int(data["max_len"]),
                    source=str(path),
                )
        except (OSError, KeyError, ValueError) as err:
            raise InvalidArgument(f"{path}: unreadable feature store ({err})") from err


def build_store(log_path: str | os.PathLike[str], max_len: int = DEFAULT_MAX_LEN) -> SequenceStore:
    """Read an impression log (Parquet or CSV, the data contract) and keep its last clicks per user."""
    try:
        from contract.log import read_log
    except ImportError as err:  # the ranker image has no pandas: ship a features.npz instead
        raise InvalidArgument(
            f"reading the log {log_path} needs pandas; build {FEATURES_FILE} with "
            "`keep features` where the trainer is installed"
        ) from err
    df = read_log(log_path, columns=HISTORY_COLUMNS)
    return SequenceStore.from_clicks(
        df["user_id"].to_numpy(),
        df["item_id"].to_numpy(),
        df["category_id"].to_numpy(),
        df["ts"].to_numpy(),
        df["click"].to_numpy(),
        max_len=max_len,
        source=str(log_path),
    )


def open_store(path: str | os.PathLike[str] | None, max_len: int = DEFAULT_MAX_LEN) -> SequenceStore:
    """A store from a ``features.npz`` or a log; ``None`` gives the empty store."""
    if path is None:
        return SequenceStore.empty()
    p = Path(path)
    if not p.exists():
        raise InvalidArgument(f"RANKER_FEATURES_PATH {p} does not exist")
    store = SequenceStore.load(p) if p.suffix == ".npz" else build_store(p, max_len)
    log.info("behaviour sequences for %d users from %s", len(store), p)
    return store


def main(argv: list[str] | None = None) -> int:
    """``python -m ranker.features LOG OUT [--max-len N]``: the same as ``keep features``."""
    from ranker.commands import features_main

    return features_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
