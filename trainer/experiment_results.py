"""What ``keep experiment`` writes: per-method means, stds and runs over the seeds (:func:`aggregate`)
and the whole ``results.json`` (:func:`experiment_result`), which ``report.md`` is drawn from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.data.synth_truth import read_oracle
from trainer.stats import lift_stats

if TYPE_CHECKING:
    from trainer.experiment import Data, ExperimentConfig, Runner


def _nanmean(values: list[float]) -> float:
    """Mean over the defined values; NaN (without numpy's empty-slice warning) when there are none,
    e.g. a user group with no test user who has both labels (small real data)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if len(arr) else float("nan")


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    groups: dict[str, dict[str, float]] = {}
    groups_sub: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        entry: dict[str, Any] = {}
        for metric in ("gauc", "auc"):
            values = [r[metric] for r in rs]
            entry[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "runs": values,
            }
        entry["epochs"] = [r["epochs"] for r in rs]
        entry["seconds"] = float(sum(r["seconds"] for r in rs))
        methods[name] = entry
        names = rs[0]["groups"].keys()
        groups[name] = {g: _nanmean([r["groups"][g] for r in rs]) for g in names}
        names = rs[0].get("groups_sub", {}).keys()
        groups_sub[name] = {g: _nanmean([r["groups_sub"][g] for r in rs]) for g in names}
    return {"methods": methods, "groups": groups, "groups_sub": groups_sub}


def experiment_result(
    cfg: ExperimentConfig,
    d: Data,
    runner: Runner,
    aggregated: dict[str, Any],
    group_edges: tuple[Any, Any],
    wall_seconds: float,
) -> dict[str, Any]:
    """``results.json``: the data, every method's runs over the seeds, the extractors' reports, the
    paired lift statistics and the oracle where the data is a synthetic world. ``group_edges``: the
    user groups' edges by super-domain and by sub-domain clicks (:func:`trainer.report.user_groups`)."""
    group_info, sub_info = group_edges
    result_methods = aggregated["methods"]
    return {
        "dataset": {
            "super": {"rows": len(d.super), "users": int(d.super["user_id"].nunique())},
            "train": {"rows": len(d.train), "users": int(d.train["user_id"].nunique())},
            "test": {"rows": len(d.test), "users": int(d.test["user_id"].nunique())},
            "files": {"super": str(cfg.super_path), "train": str(cfg.train_path), "test": str(cfg.test_path)},
        },
        **aggregated,
        "group_edges": group_info,
        #: Extra: the same split by the user's clicks in the downstream (sub-domain) training log.
        "group_edges_sub": sub_info,
        "seeds": cfg.seeds,
        "setup": {
            "max_epochs": cfg.max_epochs,
            "reuse_extractors": cfg.reuse_extractors,
            "separate_extractors": cfg.separate_extractors,
            "sparse_lr_ratio": cfg.sparse_lr_ratio,
            "batch_size": cfg.downstream.batch_size,
            "lr": cfg.downstream.lr,
        },
        "pretrain_seconds": runner.timings,
        #: Each extractor's held-out per-task GAUC/AUC and passes, per seed (trainer.extractor_metrics).
        "extractor": runner.extractor_reports(),
        #: Each method's lift over base, paired by seed (trainer.stats).
        "stats": {
            "reference": "base",
            "gauc": lift_stats({m: r["gauc"]["runs"] for m, r in result_methods.items()}),
            "auc": lift_stats({m: r["auc"]["runs"] for m, r in result_methods.items()}),
        },
        #: The true click model's test GAUC when the data is a synthetic world (its truth.json).
        "oracle": read_oracle(cfg.test_path, len(d.test)),
        "wall_seconds": wall_seconds,
    }
