"""Score a log with a trained downstream artifact and report GAUC / AUC (paper §6.2, eq. 7).

Histories for test rows come from ``history_from`` (normally ``concat(train, test)``); they stop strictly
before each row's ``ts``, so nothing leaks. Knowledge goes through the same providers as training, and
the artifact refuses knowledge whose schema or pinned version differs from what it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from contract.artifact import Artifact
from contract.downstream import DownstreamConfig
from contract.ids import Vocabs
from ranker.model import Batch, build_model
from services.errors import InvalidArgument
from trainer.coverage import DEFAULT_MIN_COVERAGE, check_coverage
from trainer.data.dataset import EncodedLog
from trainer.train import KnowledgeProvider, downstream_batch, task_rows


def predict(
    artifact: Artifact,
    df: pd.DataFrame,
    providers: Sequence[KnowledgeProvider] = (),
    *,
    history_from: pd.DataFrame | None = None,
    knowledge: dict[str, np.ndarray] | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Click (or task) probabilities for every row of ``df``, in row order."""
    require_providers(artifact, providers)
    matrices = dict(knowledge or {})
    for p in providers:
        if p.name not in matrices:
            matrices[p.name] = p.rows(df)
    return score_model(
        build_model(artifact),
        artifact.vocabs,
        df,
        history_from=df if history_from is None else history_from,
        knowledge=matrices,
        batch_size=batch_size,
    )


def require_providers(artifact: Artifact, providers: Sequence[KnowledgeProvider]) -> None:
    """Refuse providers whose plug-ins, schemas or pinned versions are not the artifact's."""
    offered = {p.name: p for p in providers}
    for name in set(artifact.knowledge) | set(offered):
        p = offered.get(name)
        artifact.require_knowledge(
            name, p.spec.schema if p else None, p.spec.version if p and p.spec.version else None
        )


class Scorer(Protocol):
    """What :func:`score_model` needs: logits per batch and the downstream config (for ``max_len``).
    The downstream model is one; so are the cross-domain baselines (``trainer.baselines``)."""

    cfg: DownstreamConfig
    training: bool

    def __call__(self, batch: Batch) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def score_model(
    model: Scorer,
    vocabs: Vocabs,
    df: pd.DataFrame,
    *,
    history_from: pd.DataFrame,
    knowledge: dict[str, np.ndarray],
    batch_size: int = 4096,
) -> np.ndarray:
    """Probabilities of a model in memory (also used for validation between epochs); histories of the
    model's own ``max_len``."""
    log = EncodedLog.encode(
        df.reset_index(drop=True), vocabs, history_from=history_from, max_len=model.cfg.max_len
    )
    out = np.empty(len(df), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(df), batch_size):
            rows = np.arange(start, min(start + batch_size, len(df)))
            out[rows] = torch.sigmoid(model(downstream_batch(log, rows, knowledge))).numpy()
    model.train(was_training)
    return out


def evaluate(
    artifact: Artifact,
    test: pd.DataFrame,
    providers: Sequence[KnowledgeProvider] = (),
    *,
    history_from: pd.DataFrame | None = None,
    knowledge: dict[str, np.ndarray] | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> dict[str, Any]:
    """``{gauc, auc, rows, users, coverage}`` on the task the artifact was trained for; refuses
    (:class:`trainer.coverage.CoverageTooLow`) knowledge found for fewer rows than ``min_coverage``."""
    from trainer.metrics import auc, gauc

    rows_df = task_rows(test, artifact.task)
    if len(rows_df) == 0:
        raise InvalidArgument(f"no test rows for task {artifact.task!r}")
    hist = history_from if history_from is not None else test
    require_providers(artifact, providers)
    matrices = dict(knowledge or {})
    flags: list[tuple[str, np.ndarray]] = []
    for p in providers:
        if p.name not in matrices:
            matrices[p.name] = p.rows(rows_df)
            found = getattr(p, "found", None)
            if found is not None:
                flags.append((p.name, found))
    coverage = check_coverage(flags, min_coverage)
    scores = predict(artifact, rows_df, providers, history_from=hist, knowledge=matrices)
    labels = rows_df[artifact.task].to_numpy()
    users = rows_df["user_id"].astype(str).to_numpy()
    out: dict[str, Any] = {
        "gauc": float(gauc(users, labels, scores)),
        "auc": float(auc(labels, scores)),
        "rows": len(rows_df),
        "users": int(pd.Series(users).nunique()),
    }
    if coverage:
        out["coverage"] = coverage
    return out
