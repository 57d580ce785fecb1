"""Stage 2 training: the downstream model, day by day, with knowledge plugged in (paper §3.2, §4.3).

One pass per epoch, days ascending, shuffled within a day (``EncodedLog.batches``). Knowledge comes from
:class:`KnowledgeProvider` objects, computed once per log before the loop:

- :class:`GkcKnowledge`: through a reader with ``batch_get`` (the GKC client for a pinned version, or a
  local bundle reader) and :func:`ranker.knowledge.knowledge_for_rows` — the same assembly serving uses.
- the experiment's offline extractor knowledge (full ``K(u,i)``), see ``trainer.experiment``.

``--init`` warm-starts from a previous artifact: every base parameter is copied; ids new today grow the
vocabularies (old rows keep their values at their new positions); new plug-ins start at zero output.

Under ``torchrun`` (``group``, see ``trainer.distributed``) every rank fetches the knowledge of its own
contiguous slice of the rows (through its own GKC client or bundle reader) and the slices are gathered,
so each rank holds the same matrices; every global batch is split ``rank::world``, each shard's mean
loss is weighted by its share of the batch and the gradients are averaged: the same update as one
process, up to float rounding. Every rank returns the artifact; the caller writes it on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from contract.artifact import Artifact, TrainingInfo
from contract.downstream import DownstreamConfig
from contract.ids import RESERVED, Vocabs
from contract.knowledge import KnowledgeSchema, KnowledgeSpec
from contract.schema import DEFAULT_MAX_LEN, IMPRESSION_TASKS, require_task
from ranker.knowledge import KnowledgeReader, knowledge_for_rows
from ranker.model import Batch, DownstreamModel, load_base_into
from services.errors import InvalidArgument
from trainer.coverage import DEFAULT_MIN_COVERAGE, check_coverage
from trainer.data.dataset import EncodedLog
from trainer.distributed import DataParallel

#: Which embedding table each id-indexed parameter belongs to (rows are remapped when vocabularies grow).
EMBEDDING_VOCAB = {
    "sparse.user.weight": "user",
    "sparse.item.weight": "item",
    "sparse.category.weight": "category",
    "sparse.shop.weight": "shop",
    "coaction.weights.weight": "item",
    "coaction.inputs.weight": "item",
}


@dataclass(frozen=True)
class TrainConfig:
    task: str = "click"
    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    max_len: int = DEFAULT_MAX_LEN
    emb_dim: int = 16
    mlp: tuple[int, ...] = (200, 80)
    plugin_layer: int = 1
    use_user_id: bool = False
    progress: bool = True
    #: Refuse (``trainer.coverage.CoverageTooLow``) when a GKC provider found the user, item or
    #: (user, category) knowledge of fewer rows than this share (0: report only).
    min_coverage: float = DEFAULT_MIN_COVERAGE


class KnowledgeProvider(Protocol):
    """Knowledge for a plug-in: its name, spec (schema, version) and a matrix per log row."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> KnowledgeSpec: ...

    def rows(self, df: pd.DataFrame) -> np.ndarray: ...


@dataclass
class GkcKnowledge:
    """K̂ through a GKC-style reader for one pinned version (the serving path).

    ``version``, ``publish_id`` and ``checksum`` are the concrete identity read (see
    :func:`trainer.knowledge_pin.resolve_pin`): every answer must carry it, else
    :class:`contract.knowledge.KnowledgeMismatch`. After :meth:`rows`, ``found`` holds per row whether
    the user, item and (user, category) knowledge were found (coverage, ``trainer.knowledge_pin``)."""

    reader: KnowledgeReader
    version: int
    schema: KnowledgeSchema
    name: str = "gkc"
    progress: bool = False
    publish_id: str = ""
    checksum: str = ""
    found: np.ndarray | None = None

    @property
    def spec(self) -> KnowledgeSpec:
        return KnowledgeSpec(
            schema=self.schema,
            version=self.version,
            source={"reader": "gkc"},
            publish_id=self.publish_id,
            checksum=self.checksum,
        )

    def rows(self, df: pd.DataFrame) -> np.ndarray:
        found = np.zeros((len(df), 3), dtype=bool)
        matrix = knowledge_for_rows(
            self.reader,
            self.version,
            self.schema,
            df["user_id"].to_numpy(),
            df["item_id"].to_numpy(),
            df["category_id"].to_numpy(),
            progress=self.progress,
            pin=self.spec,
            found=found,
        )
        self.found = found
        return matrix


def task_rows(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """The rows a task learns from: all impressions for click; clicked rows for conversion and cart."""
    require_task(task)
    if task not in df.columns:
        raise InvalidArgument(f"task {task!r} needs a '{task}' column, which the log does not have")
    if task in IMPRESSION_TASKS:
        return df
    return df[df["click"] == 1].reset_index(drop=True)


def downstream_batch(
    log: EncodedLog,
    rows: np.ndarray,
    knowledge: dict[str, np.ndarray],
    task: str | None = None,
    device: str = "cpu",
) -> Batch:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return Batch(
        user=t(log.user[rows]),
        item=t(log.item[rows]),
        category=t(log.category[rows]),
        shop=t(log.shop[rows]),
        hist_item=t(log.history.gather(rows, "item")),
        hist_category=t(log.history.gather(rows, "category")),
        knowledge={k: t(v[rows]) for k, v in knowledge.items()},
        label=t(log.labels[task][rows].astype(np.float32)) if task else None,
    )


def provider_rows(provider: KnowledgeProvider, df: pd.DataFrame, group: DataParallel) -> np.ndarray:
    """``provider.rows(df)``; under torchrun each rank fetches its :meth:`~DataParallel.span` only."""
    if not group.enabled:
        return provider.rows(df)
    lo, hi = group.span(len(df))
    return group.gather_rows(provider.rows(df.iloc[lo:hi]), len(df))


def remap_state(
    state: dict[str, torch.Tensor], old: Vocabs, new: Vocabs, fresh: DownstreamModel
) -> dict[str, torch.Tensor]:
    """Embedding rows of ``old`` ids moved to their ``new`` positions; new ids keep ``fresh``'s init."""
    out = dict(state)
    own = fresh.state_dict()
    for key, vocab_name in EMBEDDING_VOCAB.items():
        if key not in state:
            continue
        old_vocab, new_vocab = getattr(old, vocab_name), getattr(new, vocab_name)
        table = own[key].clone()
        table[:RESERVED] = state[key][:RESERVED]
        if old_vocab is not None and new_vocab is not None and len(old_vocab.keys):
            dest = torch.from_numpy(new_vocab.lookup(old_vocab.keys))
            table[dest] = state[key][RESERVED : RESERVED + len(old_vocab.keys)]
        out[key] = table
    return out


def downstream_config(vocabs: Vocabs, cfg: TrainConfig) -> DownstreamConfig:
    return DownstreamConfig(
        n_users=len(vocabs.user),
        n_items=len(vocabs.item),
        n_categories=len(vocabs.category),
        n_shops=vocabs.n_shops(),
        emb_dim=cfg.emb_dim,
        use_user_id=cfg.use_user_id,
        mlp=cfg.mlp,
        plugin_layer=cfg.plugin_layer,
        max_len=cfg.max_len,
    )


def prepare_model(
    vocabs: Vocabs,
    cfg: TrainConfig,
    providers: Sequence[KnowledgeProvider],
    init: Artifact | None,
) -> tuple[DownstreamModel, list[str]]:
    """A model for ``vocabs`` with one plug-in per provider; warm-started from ``init`` if given.

    Returns the model and the plug-ins that start fresh (they need their normaliser fitted).
    """
    if init is not None:
        base = replace(
            init.config,
            n_users=len(vocabs.user),
            n_items=len(vocabs.item),
            n_categories=len(vocabs.category),
            n_shops=len(vocabs.shop) if vocabs.shop is not None else init.config.n_shops,
        )
    else:
        base = downstream_config(vocabs, cfg)
    mcfg = replace(base, plugins={})
    for p in providers:
        if init is not None and p.name in init.knowledge:
            init.knowledge[p.name].schema.require(p.spec.schema, what=f"knowledge {p.name!r} of --init")
        mcfg = mcfg.with_plugin(p.name, p.spec.schema.dim)
    if init is not None:
        dropped = set(init.config.plugins) - set(mcfg.plugins)
        if dropped:
            raise InvalidArgument(f"--init model has plug-ins {sorted(dropped)} that this run does not feed")
    torch.manual_seed(cfg.seed)
    model = DownstreamModel(mcfg)
    if init is None:
        return model, list(mcfg.plugins)
    fresh_keys = load_base_into(model, remap_state(init.state, init.vocabs, vocabs, model))
    return model, sorted({k.split(".")[1] for k in fresh_keys})


def fit_normalisers(model: DownstreamModel, names: list[str], knowledge: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        matrix = knowledge[name]
        sample = matrix[rng.choice(len(matrix), size=min(len(matrix), 50_000), replace=False)]
        model.plugins[name].fit_normaliser(torch.from_numpy(sample))  # type: ignore[operator]


def train(
    df: pd.DataFrame,
    cfg: TrainConfig,
    providers: Sequence[KnowledgeProvider] = (),
    init: Artifact | None = None,
    *,
    knowledge: dict[str, np.ndarray] | None = None,
    on_epoch: Callable[[int, DownstreamModel, Vocabs], None] | None = None,
    train_file: str = "",
    group: DataParallel | None = None,
) -> Artifact:
    """Train on ``df`` (a contract log) and return the artifact.

    ``knowledge`` may hold precomputed matrices per provider name (rows aligned with the task rows of
    ``df``); otherwise each provider computes them. ``on_epoch(epoch, model, vocabs)`` runs after every pass
    (on every rank under torchrun). ``group``: data-parallel training, see the module docstring.
    """
    group = group or DataParallel()
    rows_df = task_rows(df, cfg.task)
    if len(rows_df) == 0:
        raise InvalidArgument(f"no training rows for task {cfg.task!r}")
    vocabs = Vocabs.build(df, init.vocabs if init is not None else None)
    model, fresh = prepare_model(vocabs, cfg, providers, init)
    log = EncodedLog.encode(rows_df, vocabs, history_from=df, max_len=model.cfg.max_len)
    matrices = dict(knowledge or {})
    flags: list[tuple[str, np.ndarray]] = []
    for p in providers:
        if p.name not in matrices:
            matrices[p.name] = provider_rows(p, rows_df, group)
            found = getattr(p, "found", None)
            if found is not None:  # gathered like the rows, so every rank decides the same
                flags.append((p.name, group.gather_rows(found.astype(np.uint8), len(rows_df))))
        if matrices[p.name].shape != (len(rows_df), p.spec.schema.dim):
            raise InvalidArgument(f"knowledge {p.name!r} has shape {matrices[p.name].shape}")
    coverage = check_coverage(flags, cfg.min_coverage)
    fit_normalisers(model, fresh, matrices)
    model.to(group.device)
    group.broadcast_parameters(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n_batches = -(-len(log) // cfg.batch_size)
    for epoch in range(cfg.epochs):
        model.train()
        bar = tqdm(
            log.batches(cfg.batch_size, seed=cfg.seed * 1000 + epoch),
            total=n_batches,
            desc=f"train {cfg.task} epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and group.is_writer),
            leave=False,
        )
        for rows in bar:
            local = group.shard(rows)
            optimiser.zero_grad(set_to_none=True)
            if len(local):  # an empty shard still joins the all-reduce (with zero gradients)
                batch = downstream_batch(log, local, matrices, cfg.task, group.device)
                assert batch.label is not None
                loss = loss_fn(model(batch), batch.label) * group.weight(len(local), len(rows))
                loss.backward()
            group.average_gradients(model)
            optimiser.step()
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1, model, vocabs)
    model.eval()
    return Artifact(
        config=model.cfg,
        task=cfg.task,
        vocabs=vocabs,
        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        knowledge={p.name: p.spec for p in providers},
        training=TrainingInfo(
            rows=len(rows_df),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            warm_start=init is not None,
            world_size=group.world,
            days=tuple(sorted({int(d) for d in np.unique(log.day)})),
            train_file=train_file,
            coverage=coverage,
        ),
    )
