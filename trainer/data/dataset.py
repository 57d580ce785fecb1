"""A log encoded for training: vocabulary indices, labels, pairing keys and a history index.

Shared by Stage 1 (extractor) and Stage 2 (downstream). Numpy only; the model packages turn a batch
of row indices into tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.ids import Vocabs
from contract.schema import DEFAULT_MAX_LEN, OPTIONAL_LABEL_COLUMNS, day_of
from trainer.data.ordering import day_order
from trainer.data.sequences import HistoryIndex


@dataclass(frozen=True)
class EncodedLog:
    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    shop: np.ndarray
    ts: np.ndarray
    labels: dict[str, np.ndarray]
    #: Rows sharing a key form the pairs of the pairwise loss (session, else user x day).
    pair_key: np.ndarray
    history: HistoryIndex
    raw: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.user)

    @property
    def day(self) -> np.ndarray:
        return day_of(self.ts)

    @classmethod
    def encode(
        cls,
        df: pd.DataFrame,
        vocabs: Vocabs,
        *,
        history_from: pd.DataFrame | None = None,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> EncodedLog:
        """Encode ``df``; histories come from the clicks of ``history_from`` (default: ``df`` itself).

        For a test day pass ``history_from=concat(train, test)``: histories still stop strictly before
        each row's ``ts``, so nothing leaks.
        """
        user = vocabs.user.lookup(df["user_id"].to_numpy())
        ts = df["ts"].to_numpy(np.int64)
        src = df if history_from is None else history_from
        if history_from is None:
            h_user = user
            h_item = vocabs.item.lookup(df["item_id"].to_numpy())
            h_cat = vocabs.category.lookup(df["category_id"].to_numpy())
        else:
            h_user = vocabs.user.lookup(src["user_id"].to_numpy())
            h_item = vocabs.item.lookup(src["item_id"].to_numpy())
            h_cat = vocabs.category.lookup(src["category_id"].to_numpy())
        history = HistoryIndex.build(
            h_user,
            src["ts"].to_numpy(np.int64),
            src["click"].to_numpy(),
            {"item": h_item, "category": h_cat},
            max_len=max_len,
            rows_user=None if history_from is None else user,
            rows_ts=None if history_from is None else ts,
        )
        return cls._with_history(df, vocabs, history, user)

    @classmethod
    def from_windows(
        cls,
        df: pd.DataFrame,
        vocabs: Vocabs,
        *,
        offsets: np.ndarray,
        hist_item: np.ndarray,
        hist_category: np.ndarray,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> EncodedLog:
        """Encode ``df`` whose rows' windows were built beforehand (``keep data sequences``): row ``r``'s
        clicks are ``hist_*[offsets[r]:offsets[r + 1]]`` (raw ids, oldest first), at least the last
        ``max_len`` of them. The same vocabulary lookups as :meth:`encode`, so the same batches
        (:meth:`HistoryIndex.click_counts` is then capped at the stored window)."""
        history = HistoryIndex(
            fields={"item": vocabs.item.lookup(hist_item), "category": vocabs.category.lookup(hist_category)},
            start=np.asarray(offsets[:-1], dtype=np.int64),
            end=np.asarray(offsets[1:], dtype=np.int64),
            max_len=max_len,
        )
        return cls._with_history(df, vocabs, history)

    @classmethod
    def _with_history(
        cls, df: pd.DataFrame, vocabs: Vocabs, history: HistoryIndex, user: np.ndarray | None = None
    ) -> EncodedLog:
        user = vocabs.user.lookup(df["user_id"].to_numpy()) if user is None else user
        ts = df["ts"].to_numpy(np.int64)
        labels = {"click": df["click"].to_numpy(np.int8)}
        for col in OPTIONAL_LABEL_COLUMNS:
            if col in df.columns:
                labels[col] = df[col].to_numpy(np.int8)
        # Only equality of keys matters (pairs never leave a batch, a batch never leaves a day).
        if "session_id" in df.columns:
            pair_key = pd.factorize(df["session_id"].astype(str))[0].astype(np.int64)
        else:
            # (user row, day) as one integer: the codes of the former "user:day" strings (factorize
            # numbers keys by first appearance) without a Python string per row.
            day = day_of(ts).astype(np.int64)
            span = int(day.max() - day.min()) + 1 if len(day) else 1
            pair_key = pd.factorize(np.asarray(user, dtype=np.int64) * span + (day - day.min(initial=0)))[0]
            pair_key = pair_key.astype(np.int64)
        return cls(
            user=user,
            item=vocabs.item.lookup(df["item_id"].to_numpy()),
            category=vocabs.category.lookup(df["category_id"].to_numpy()),
            shop=(
                vocabs.shop.lookup(df["shop_id"].to_numpy())
                if vocabs.shop is not None and "shop_id" in df.columns
                else np.zeros(len(df), dtype=np.int64)
            ),
            ts=ts,
            labels=labels,
            pair_key=pair_key,
            history=history,
            raw=df,
        )

    def batches(self, batch_size: int, seed: int, shuffle: bool = True) -> Iterator[np.ndarray]:
        """Row-index batches: days ascending, shuffled within a day (or in file order)."""
        order = day_order(self.ts, seed) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
