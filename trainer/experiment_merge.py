"""``keep experiment-merge``: one report from several ``keep experiment`` runs of the same data.

An experiment's methods are independent given the data and the seed, so the methods can run as
several processes (or machines) at once, each ``keep experiment --methods SOME --out RUN_k`` on the
same logs with the same ``--seeds`` and options; this merges their ``results.json`` into one
``results.json``/``report.md``/plots, as if one run had done every method:

- every run must be of the same data (``dataset``), seeds and ``setup``, else a clear error;
- a method that appears in several runs (e.g. ``base`` in each, for its own report) must have the very
  same per-seed GAUCs in each (runs are seeded: the same method and seed give the same model);
- the paired statistics against ``base`` are recomputed over the merged methods;
- ``wall_seconds`` is the longest run's (they ran side by side); ``merged_from`` lists each run with its
  methods and wall time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.errors import InvalidArgument
from trainer.stats import lift_stats

#: Keys that must be equal in every merged run.
SAME = ("dataset", "seeds", "setup", "oracle", "group_edges", "group_edges_sub")


def load_results(run: Path) -> dict[str, Any]:
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise InvalidArgument(f"{run}: no results.json (is it the --out of a finished keep experiment?)")
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except ValueError as err:
        raise InvalidArgument(f"{path}: not JSON ({err})") from None
    if not isinstance(result.get("methods"), dict):
        raise InvalidArgument(f"{path}: no 'methods' (not a keep experiment results.json)")
    return result


def merge_results(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The merged results of ``results`` (``names``: where each came from, for errors and the record)."""
    if not results:
        raise InvalidArgument("nothing to merge: give at least one run")
    first = results[0]
    for name, r in zip(names[1:], results[1:], strict=True):
        for key in SAME:
            if r.get(key) != first.get(key):
                raise InvalidArgument(f"{name}: its {key!r} differs from {names[0]}'s; runs of other data")
    methods: dict[str, Any] = {}
    merged: dict[str, dict[str, Any]] = {"groups": {}, "groups_sub": {}}
    extractor: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, r in zip(names, results, strict=True):
        for method, m in r["methods"].items():
            if method in methods:
                if methods[method]["gauc"]["runs"] != m["gauc"]["runs"]:
                    raise InvalidArgument(
                        f"{method}: per-seed GAUC {m['gauc']['runs']} in {name} but "
                        f"{methods[method]['gauc']['runs']} in an earlier run; not the same runs"
                    )
                continue
            methods[method] = m
            for key in merged:
                merged[key][method] = r.get(key, {}).get(method, {})
        extractor.update(r.get("extractor", {}))
        timings.update(r.get("pretrain_seconds", {}))
    stats: dict[str, Any] = {"reference": "base"}
    for metric in ("gauc", "auc"):
        stats[metric] = lift_stats({n: m[metric]["runs"] for n, m in methods.items()})
    return {
        **first,
        "methods": methods,
        **merged,
        "extractor": extractor,
        "pretrain_seconds": timings,
        "stats": stats,
        "wall_seconds": max(float(r.get("wall_seconds", 0.0)) for r in results),
        "merged_from": [
            {"run": n, "methods": sorted(r["methods"]), "wall_seconds": r.get("wall_seconds")}
            for n, r in zip(names, results, strict=True)
        ],
    }


def merge_runs(runs: list[Path], out: Path) -> dict[str, Any]:
    """Merge the runs' results.json into ``out`` (results.json, report.md, plots)."""
    from trainer.report import write_report

    result = merge_results([load_results(r) for r in runs], [str(r) for r in runs])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    write_report(result, out)
    return result
