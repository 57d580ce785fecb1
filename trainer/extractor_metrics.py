"""What ``keep experiment`` reports about each extractor it pre-trained (``results.json`` → ``extractor``).

- ``held_out``: per-task GAUC/AUC on a super-domain day the extractor did not train on — the held-out
  days of ``metrics.json`` when there are any, else early stopping's validation day (its best pass).
- ``passes``: how many passes and why (``trainer.pretrain_passes``).
- ``sub_domain_validation``: the extractor's own click score on the downstream validation day (the
  last training day of the sub-domain; never the test day): does what it learned rank the sub-domain's
  clicks at all? Near 0.5 means its knowledge carries little the downstream model can use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.schema import TASKS, day_of


def extractor_summary(path: Path, train: pd.DataFrame, super_df: pd.DataFrame) -> dict[str, Any]:
    from trainer.knowledge_fn import KnowledgeFn
    from trainer.metrics import auc, gauc
    from trainer.pretrain_steps import iter_scores

    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    held = {t: metrics[t] for t in TASKS if t in metrics}
    source = "held-out days"
    if not held and "validation" in metrics:
        held, source = (
            metrics["validation"],
            f"early-stopping validation day {metrics['passes']['validation_day']}",
        )

    def brief(entry: dict[str, Any]) -> dict[str, Any]:
        keep = ("gauc", "auc", "gauc_popularity", "rows", "positives")
        return {k: entry[k] for k in keep if k in entry}

    summary: dict[str, Any] = {
        "held_out": {t: brief(e) for t, e in held.items()},
        "held_out_source": source if held else "none",
        "passes": metrics.get("passes", {}),
    }
    days = day_of(train["ts"].to_numpy())
    val = train[days == days.max()].reset_index(drop=True)
    kfn = KnowledgeFn.load(path)
    heads = [h for h in kfn.model.heads() if h.rsplit(":", 1)[-1] == "click"]
    if len(val) and heads:
        log = kfn.encode(val, super_df)
        parts: dict[str, list[np.ndarray]] = {}
        for _, out in iter_scores(kfn.model, log, ["click"]):
            for h in heads:
                parts.setdefault(h, []).append(out[h])
        score = np.mean([np.concatenate(v) for v in parts.values()], axis=0)
        users, labels = val["user_id"].astype(str).to_numpy(), val["click"].to_numpy()
        g, a = gauc(users, labels, score), auc(labels, score)
        summary["sub_domain_validation"] = {
            "click": {
                "gauc": None if np.isnan(g) else round(float(g), 6),
                "auc": None if np.isnan(a) else round(float(a), 6),
                "rows": len(val),
            }
        }
    return summary
