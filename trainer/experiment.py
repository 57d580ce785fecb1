"""``keep experiment``: the paper's offline comparisons (Tables 2, 3, 4, 7, 8) on any data in the contract.

Per seed: pre-train the extractors the selected methods need (``trainer.pretrain``), compute each
method's knowledge for the downstream rows, pick the number of epochs on a validation slice (train on
all training days but the last, score the last day after each pass; never the test set), retrain on all
training days with that many passes, and score the test day. ``keep_decomposition_degeneration`` — what
GKC serves — goes through the real serving path: export a bundle, read it with a bundle reader and
assemble K̂ with ``ranker.knowledge``.

Extractor reuse (default, to fit the time budget): one multi-task ``full`` extractor gives ``keep``,
``keep_ku``, ``keep_ku_ki``, ``keep_click`` (its click block) and ``keep_click_cv``; one ``serving``
extractor gives ``keep_decomposition`` (its two-tower blocks), ``keep_degeneration`` (its K̂_uc) and
``keep_decomposition_degeneration``. ``separate_extractors=True`` pre-trains each variant on its own.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from contract.knowledge import KnowledgeSchema, KnowledgeSpec
from contract.log import read_log
from contract.schema import day_of
from ranker.knowledge import manifest_schema
from services.errors import InvalidArgument
from trainer.baselines.cross_domain import CrossDomainFit
from trainer.baselines.methods import CROSS_DOMAIN_METHODS, BaselineMethods
from trainer.experiment_methods import (
    EXTRACTORS,
    METHOD_NAMES,
    Method,
    method_table,
)
from trainer.experiment_results import aggregate, experiment_result
from trainer.report import user_groups
from trainer.train import GkcKnowledge, TrainConfig, train


@dataclass(frozen=True)
class ExperimentConfig:
    super_path: Path
    train_path: Path
    test_path: Path
    out: Path
    methods: tuple[str, ...] = METHOD_NAMES
    seeds: int = 3
    max_epochs: int = 3
    #: Pre-train once (seed 0) and reuse it for every downstream seed, instead of once per seed.
    reuse_extractors: bool = False
    separate_extractors: bool = False
    #: sample_merging adds the super-domain rows of the downstream training days (cross-domain setup).
    merge_days: str = "train"
    #: The extractors' tables' learning rate over the dense one (``None``: the trainer's default).
    sparse_lr_ratio: float | None = None
    downstream: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    progress: bool = True


@dataclass
class Data:
    super: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame

    @property
    def history(self) -> pd.DataFrame:
        return pd.concat([self.train, self.test], ignore_index=True)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Runner:
    """One experiment: caches extractors, knowledge and bundles per seed under ``out/work``."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.methods = method_table(cfg.separate_extractors)
        unknown = [m for m in cfg.methods if m not in self.methods]
        if unknown:
            raise InvalidArgument(f"unknown method(s) {unknown}; expected some of {', '.join(self.methods)}")
        self.data = Data(read_log(cfg.super_path), read_log(cfg.train_path), read_log(cfg.test_path))
        self.work = cfg.out / "work"
        self.timings: dict[str, float] = {}
        #: (extractor dir) → (block dims, K train, K test) with every block, sliced per method.
        self._kcache: dict[Path, tuple[dict[str, int], np.ndarray, np.ndarray]] = {}
        d = self.data
        self.baselines = BaselineMethods(
            d.super,
            d.train,
            d.test,
            reuse=cfg.reuse_extractors,
            progress=cfg.progress,
            timings=self.timings,
            cache=self.work,
        )

    # -- extractors and knowledge -------------------------------------------------------------

    def extractor_dir(self, key: str, seed: int) -> Path:
        s = 0 if self.cfg.reuse_extractors else seed
        # another tables' learning rate is another extractor: never reuse one cached under the other
        ratio = "" if self.cfg.sparse_lr_ratio is None else f"_slr{self.cfg.sparse_lr_ratio:g}"
        return self.work / f"seed{s}" / f"extractor_{key}{ratio}"

    def ensure_extractor(self, key: str, seed: int) -> Path:
        from trainer.pretrain import PretrainConfig, pretrain

        out = self.extractor_dir(key, seed)
        done = out / "progress.json"
        if done.is_file() and json.loads(done.read_text()).get("state") == "done":
            return out
        plan = EXTRACTORS[key]
        source = self.cfg.super_path if plan.source == "super" else self.cfg.train_path
        say(f"  pretrain {key} ({plan.strategy}, tasks {','.join(plan.tasks)}) on {source.name}")
        started = time.perf_counter()
        pretrain(
            PretrainConfig(
                super_path=source,
                out=out,
                tasks=plan.tasks,
                strategy=plan.strategy,
                seed=seed if not self.cfg.reuse_extractors else 0,
                holdout_days=0,
                progress=self.cfg.progress,
                sparse_lr_ratio=self.cfg.sparse_lr_ratio,
            )
        )
        self.timings[f"pretrain_{key}_s{seed}"] = time.perf_counter() - started
        return out

    def extractor_reports(self) -> dict[str, list[dict[str, Any]]]:
        """Per extractor used, per seed: held-out metrics, passes, sub-domain validation score."""
        from trainer.extractor_metrics import extractor_summary

        out: dict[str, list[dict[str, Any]]] = {}
        cache: dict[Path, dict[str, Any]] = {}
        for key in EXTRACTORS:
            for seed in range(self.cfg.seeds):
                path = self.extractor_dir(key, seed)
                if not (path / "progress.json").is_file():
                    continue
                if path not in cache:
                    hist = self.data.super if EXTRACTORS[key].source == "super" else self.data.train
                    cache[path] = {
                        "trained_on": EXTRACTORS[key].source,
                        **extractor_summary(path, self.data.train, hist),
                    }
                out.setdefault(key, []).append({**cache[path], "seed": seed})
        return out

    def extractor_knowledge(self, method: Method, seed: int) -> tuple[KnowledgeSpec, np.ndarray, np.ndarray]:
        from trainer.knowledge_fn import KnowledgeFn

        assert method.extractor is not None
        path = self.ensure_extractor(method.extractor, seed)
        if path not in self._kcache:
            kfn = KnowledgeFn.load(path)
            every = list(kfn.blocks)
            hist = self.data.super if EXTRACTORS[method.extractor].source == "super" else self.data.train
            self._kcache[path] = (
                kfn.blocks,
                kfn.matrix(kfn.encode(self.data.train, hist), every),
                kfn.matrix(kfn.encode(self.data.test, hist), every),
            )
        dims, all_train, all_test = self._kcache[path]
        blocks = [b for b in method.blocks if b in dims]
        if not blocks:
            raise InvalidArgument(f"{method.name}: extractor {path} has none of the blocks {method.blocks}")
        cols = _columns(dims, blocks)
        k_train, k_test = all_train[:, cols], all_test[:, cols]
        schema = KnowledgeSchema(kind="extractor", blocks=tuple((b, dims[b]) for b in blocks))
        spec = KnowledgeSpec(schema=schema, source={"extractor": str(path), "blocks": blocks})
        return spec, k_train, k_test

    def bundle_knowledge(self, method: Method, seed: int) -> tuple[KnowledgeSpec, np.ndarray, np.ndarray]:
        from gkc import bundle as bundle_mod
        from trainer.export import export_loaded
        from trainer.models.checkpoint import load_extractor

        assert method.extractor is not None
        path = self.ensure_extractor(method.extractor, seed)
        bundle_dir = path.parent / f"bundle_{method.extractor}"
        if not (bundle_dir / bundle_mod.MANIFEST).is_file():
            export_loaded(
                load_extractor(path), self.data.super, bundle_dir, source=self.cfg.super_path, progress=False
            )
        if method.dtype != "float32":  # the same export stored at the method's dtype
            from gkc.bundle_writer import convert

            stored = path.parent / f"bundle_{method.extractor}_{method.dtype}"
            if not (stored / bundle_mod.MANIFEST).is_file():
                convert(bundle_mod.load(bundle_dir, mmap=True), method.dtype, stored)
            bundle_dir = stored
        reader = open_bundle_reader(bundle_dir)
        schema = manifest_schema(bundle_mod.read_manifest(bundle_dir))
        provider = GkcKnowledge(reader=reader, version=0, schema=schema)
        spec = KnowledgeSpec(schema=schema, source={"bundle": str(bundle_dir)})
        return spec, provider.rows(self.data.train), provider.rows(self.data.test)

    # -- one method, one seed ------------------------------------------------------------------

    def run_method(self, name: str, seed: int, groupings: dict[str, dict[str, str]]) -> dict[str, Any]:
        from trainer.metrics import auc, gauc, gauc_by_group

        method = self.methods[name]
        started = time.perf_counter()
        train_df, test = self.data.train, self.data.test
        k_train: dict[str, np.ndarray] = {}
        k_test: dict[str, np.ndarray] = {}
        providers: list[_Fixed] = []
        fit: CrossDomainFit | None = None
        if method.merge_super:
            train_df = self.merged_train()
        elif method.baseline in CROSS_DOMAIN_METHODS:
            fit = self.baselines.cross_domain_fit(method.name, self.super_of_train_days())
        elif method.baseline is not None:
            spec, k_train["keep"], k_test["keep"] = self.baselines.knowledge(method.baseline, seed)
            providers.append(_Fixed("keep", spec))
        elif method.extractor is not None:
            fetch = self.bundle_knowledge if method.via_bundle else self.extractor_knowledge
            spec, k_train["keep"], k_test["keep"] = fetch(method, seed)
            if method.zero:
                k_train["keep"] = np.zeros_like(k_train["keep"])
                k_test["keep"] = np.zeros_like(k_test["keep"])
            providers.append(_Fixed("keep", spec))
        history = pd.concat([train_df, test], ignore_index=True)
        epochs, curve = self.select_epochs(train_df, k_train, providers, seed, fit)
        cfg = _with(self.cfg.downstream, epochs=epochs, seed=seed)
        if method.merge_super:
            # Same number of optimiser steps per pass as the sub-domain-only methods (at most the
            # paper's batch of 2000): a pass over 10x the rows otherwise costs 10x the time.
            ratio = -(-len(train_df) // len(self.data.train))
            cfg = _with(cfg, batch_size=min(2000, cfg.batch_size * ratio))
        from trainer.evaluate import predict, score_model

        if fit is not None:
            model, vocabs = fit(train_df, cfg)
            scores = score_model(model, vocabs, test, history_from=history, knowledge={})
        else:
            artifact = train(train_df, cfg, providers, knowledge=k_train)
            scores = predict(artifact, test, providers, history_from=history, knowledge=k_test)
        users = test["user_id"].astype(str).to_numpy()
        labels = test["click"].to_numpy()
        return {
            "gauc": float(gauc(users, labels, scores)),
            "auc": float(auc(labels, scores)),
            **{key: gauc_by_group(users, labels, scores, m) for key, m in groupings.items()},
            "epochs": epochs,
            "validation": curve,
            "seconds": time.perf_counter() - started,
        }

    def super_of_train_days(self) -> pd.DataFrame:
        """The super-domain rows sample merging adds (and the cross-domain baselines' source)."""
        sup, tr = self.data.super, self.data.train
        if self.cfg.merge_days == "train":
            sup = sup[np.isin(day_of(sup["ts"].to_numpy()), np.unique(day_of(tr["ts"].to_numpy())))]
        return sup

    def merged_train(self) -> pd.DataFrame:
        sup, tr = self.super_of_train_days(), self.data.train
        cols = [c for c in tr.columns if c in sup.columns]
        return pd.concat([sup[cols], tr[cols]], ignore_index=True)

    def select_epochs(
        self,
        train_df: pd.DataFrame,
        knowledge: dict[str, np.ndarray],
        providers: list[_Fixed],
        seed: int,
        fit: CrossDomainFit | None = None,
    ) -> tuple[int, list[float]]:
        """Passes (1..max_epochs) that maximise GAUC on the last training day of the sub-domain.

        ``fit``: a cross-domain baseline's own trainer instead of ``train`` (same days, same callback)."""
        from trainer.evaluate import score_model
        from trainer.metrics import gauc

        days = day_of(train_df["ts"].to_numpy())
        sub_days = np.unique(day_of(self.data.train["ts"].to_numpy()))
        if len(sub_days) < 2 or self.cfg.max_epochs <= 1 or len(train_df) > len(self.data.train):
            # Merged super-domain rows make one pass many times longer than the sub-domain's: one pass.
            return 1, []
        val_day = sub_days[-1]
        fit_rows = days < val_day
        val_df = self.data.train[day_of(self.data.train["ts"].to_numpy()) == val_day].reset_index(drop=True)
        # Knowledge exists only for methods trained on the sub-domain log itself, so rows align.
        k_val = {k: v[days == val_day] for k, v in knowledge.items()}
        users = val_df["user_id"].astype(str).to_numpy()
        labels = val_df["click"].to_numpy()
        curve: list[float] = []

        def on_epoch(epoch: int, model: Any, vocabs: Any) -> None:
            scores = score_model(model, vocabs, val_df, history_from=train_df, knowledge=k_val)
            curve.append(float(gauc(users, labels, scores)))

        cfg = _with(self.cfg.downstream, epochs=self.cfg.max_epochs, seed=seed)
        fit_df = train_df[fit_rows].reset_index(drop=True)
        if fit is not None:
            fit(fit_df, cfg, on_epoch)
        else:
            train(
                fit_df,
                cfg,
                providers,
                knowledge={k: v[fit_rows] for k, v in knowledge.items()},
                on_epoch=on_epoch,
            )
        best = int(np.nanargmax(curve)) + 1 if curve and not np.all(np.isnan(curve)) else 1
        return best, curve


@dataclass
class _Fixed:
    """A knowledge provider whose matrices are precomputed (passed as ``knowledge=``)."""

    name: str
    spec: KnowledgeSpec

    def rows(self, df: pd.DataFrame) -> np.ndarray:
        raise InvalidArgument(f"knowledge {self.name!r} must be precomputed for these rows")


def _columns(dims: dict[str, int], blocks: list[str]) -> np.ndarray:
    """Column indices of ``blocks`` in a matrix holding every block of ``dims`` in order."""
    start, spans = 0, {}
    for name, d in dims.items():
        spans[name] = np.arange(start, start + d)
        start += d
    return np.concatenate([spans[b] for b in blocks])


def _with(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def open_bundle_reader(path: Path) -> Any:
    """A local bundle reader with the GKC client's ``batch_get``."""
    from gkc.bundle_reader import BundleReader

    return BundleReader.open(path)


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run every selected method for every seed; write results.json, report.md and the plots."""
    from trainer.report import write_report

    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(cfg)
    d = runner.data
    test_users = d.test["user_id"].to_numpy()
    group_of, group_info = user_groups(d.super, test_users)
    sub_of, sub_info = user_groups(d.train, test_users)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    for seed in range(cfg.seeds):
        for name in cfg.methods:
            r = runner.run_method(name, seed, {"groups": group_of, "groups_sub": sub_of})
            runs[name].append(r)
            say(
                f"[seed {seed + 1}/{cfg.seeds}] {name:<32} gauc {r['gauc']:.4f} auc {r['auc']:.4f} "
                f"epochs {r['epochs']} ({r['seconds']:.1f}s)"
            )
    edges = (group_info, sub_info)
    result = experiment_result(cfg, d, runner, aggregate(runs), edges, time.perf_counter() - started)
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    write_report(result, cfg.out)
    return result
