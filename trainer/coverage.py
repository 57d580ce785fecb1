"""Knowledge coverage: the share of rows whose user, item and (user, category) knowledge were found.

Training on ids the knowledge does not hold (``u123`` in the log, ``123`` in the bundle) gives the
plug-in zeros to learn from: a silent wrong model. ``keep train`` and ``keep evaluate`` therefore report
the three shares and refuse with one line when the user or item share is below ``--min-coverage``
(default :data:`DEFAULT_MIN_COVERAGE`) or no row has user-category knowledge (:data:`STRICT_KINDS`).
The ranker exports the same shares (``keep_ranker_knowledge_coverage``). Numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.errors import Conflict

#: Below this share of rows with found user, item or (user, category) knowledge a run is refused.
DEFAULT_MIN_COVERAGE = 0.5
#: The three kinds, in the column order of :func:`ranker.knowledge.found_flags`.
KINDS = ("user", "item", "user_category")
#: Kinds held to the threshold. K̂_uc exists only for the (user, category) pairs the super-domain saw, so
#: a fair share of rows lacks it (half in the synthetic worlds); it is refused only when none is found
#: (a category id spelled otherwise).
STRICT_KINDS = ("user", "item")


class CoverageTooLow(Conflict):
    """The knowledge offered covers too few rows to be the knowledge these rows were meant to read."""


@dataclass(frozen=True)
class Coverage:
    rows: int
    #: Rows whose user / item / (user, category) knowledge was found.
    found: tuple[int, int, int]

    @classmethod
    def of(cls, flags: np.ndarray) -> Coverage:
        """From an ``[n_rows, 3]`` bool array of found flags."""
        counts = flags.astype(bool).sum(axis=0) if len(flags) else np.zeros(3, dtype=np.int64)
        return cls(rows=len(flags), found=(int(counts[0]), int(counts[1]), int(counts[2])))

    def shares(self) -> dict[str, float]:
        return {k: (n / self.rows if self.rows else 0.0) for k, n in zip(KINDS, self.found, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, **{k: round(v, 4) for k, v in self.shares().items()}}

    def require(self, minimum: float, *, name: str = "gkc") -> None:
        """Raise :class:`CoverageTooLow` (one line) when the user or item share is below ``minimum``
        or no row has user-category knowledge."""
        shares = self.shares()
        low = [k for k in STRICT_KINDS if shares[k] < minimum]
        if shares["user_category"] == 0.0:
            low.append("user_category")
        if not low or self.rows == 0:
            return
        found = ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        raise CoverageTooLow(
            f"knowledge {name!r} was found for too few rows ({found} of {self.rows:,}; "
            f"--min-coverage {minimum:.0%}): do the log's ids match the bundle's (e.g. 'u123' vs '123')?"
        )


def check_coverage(flags: Iterable[tuple[str, np.ndarray]], minimum: float) -> dict[str, dict[str, Any]]:
    """Each named provider's coverage as JSON; raises :class:`CoverageTooLow` for the first one below
    ``minimum`` (``minimum <= 0`` reports only)."""
    report: dict[str, dict[str, Any]] = {}
    for name, found in flags:
        cov = Coverage.of(found)
        report[name] = cov.to_json()
        if minimum > 0:
            cov.require(minimum, name=name)
    return report
