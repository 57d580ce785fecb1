"""What ``keep experiment`` needs from the Table 2 baselines (its runner does the rest).

- ``bert4rec`` / ``s3rec`` (pre-training based): :meth:`BaselineMethods.knowledge` pre-trains the
  sequence model on the super-domain log (once per seed, or once for all with ``reuse``) and returns
  the downstream rows' knowledge; the runner plugs it into the base model exactly like KEEP's and picks
  the passes on its validation day.
- ``conet`` / ``darec`` (cross-domain): :meth:`BaselineMethods.cross_domain_fit` returns the joint
  trainer; the runner calls it for the validation fit and the final fit, and scores the test day with
  the model's sub-domain output.

Source rows of the cross-domain methods: the super-domain rows of the sub-domain training days (the
paper's cross-domain setting, the rows ``sample_merging`` adds); when the super-domain has none on those
days (the Taobao sample: super-domain days 0-4, training days 5-6), every super-domain row, all of them
earlier than the training days. Either way a fit never sees source rows after its last sub-domain day.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from contract.knowledge import KnowledgeSchema, KnowledgeSpec
from trainer.baselines.cross_domain import CrossDomainConfig, CrossDomainFit
from trainer.baselines.pretraining import PretrainedSequences, SequencePretrainConfig, pretrain_sequences

SEQUENCE_METHODS = ("bert4rec", "s3rec")
CROSS_DOMAIN_METHODS = ("conet", "darec")
BASELINES = (*CROSS_DOMAIN_METHODS, *SEQUENCE_METHODS)


@dataclass
class BaselineMethods:
    super: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    #: Pre-train once (seed 0) for every downstream seed.
    reuse: bool = False
    progress: bool = False
    #: Seconds per pre-training, keyed like the runner's ``pretrain_<name>_s<seed>``.
    timings: dict[str, float] = field(default_factory=dict)
    pretrain: SequencePretrainConfig = field(default_factory=SequencePretrainConfig)
    cross_domain: CrossDomainConfig = field(default_factory=CrossDomainConfig)
    #: Where pre-trained sequence models are kept (``seed<S>/pretrained_<name>.pt``, like the runner's
    #: extractors under ``out/work``), so a rerun or a resumed experiment reuses them; None: memory only.
    cache: Path | None = None
    _pretrained: dict[tuple[str, int], PretrainedSequences] = field(default_factory=dict, repr=False)
    _knowledge: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def pretrained(self, name: str, seed: int) -> PretrainedSequences:
        key = (name, 0 if self.reuse else seed)
        cfg = replace(self.pretrain, method=name, seed=key[1])
        path = None if self.cache is None else self.cache / f"seed{key[1]}" / f"pretrained_{name}.pt"
        if key not in self._pretrained and path is not None and path.is_file():
            stored = torch.load(path, weights_only=False)
            if isinstance(stored, PretrainedSequences) and stored.cfg == cfg:
                self._pretrained[key] = stored
        if key not in self._pretrained:
            print(f"  pretrain {name} on the super-domain click sequences", file=sys.stderr, flush=True)
            started = time.perf_counter()
            self._pretrained[key] = pretrain_sequences(self.super, cfg)
            self.timings[f"pretrain_{name}_s{key[1]}"] = time.perf_counter() - started
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(self._pretrained[key], tmp)
                tmp.replace(path)
        return self._pretrained[key]

    def knowledge(self, name: str, seed: int) -> tuple[KnowledgeSpec, np.ndarray, np.ndarray]:
        """``(spec, K train, K test)`` of a sequence baseline, histories from the super-domain."""
        model = self.pretrained(name, seed)
        key = (name, 0 if self.reuse else seed)
        if key not in self._knowledge:
            self._knowledge[key] = (model.matrix(self.train, self.super), model.matrix(self.test, self.super))
        schema = KnowledgeSchema(kind=name, blocks=tuple(model.blocks.items()))
        source: dict[str, Any] = {"pretraining": name, "epochs": model.epochs, "seed": key[1]}
        return KnowledgeSpec(schema=schema, source=source), *self._knowledge[key]

    def source_rows(self, train_days_only: pd.DataFrame) -> pd.DataFrame:
        """The cross-domain source: ``train_days_only`` (super rows of the training days) or, when that
        is empty, the whole super-domain log."""
        return train_days_only if len(train_days_only) else self.super

    def cross_domain_fit(self, name: str, train_days_only: pd.DataFrame) -> CrossDomainFit:
        cfg = replace(self.cross_domain, method=name)
        return CrossDomainFit(cfg, self.source_rows(train_days_only), self.super, progress=self.progress)
