"""The KEEP pipeline as a Python API: one function per step, each taking a frozen config.

    pretrain(PretrainConfig)  → an extractor checkpoint          (trainer.pretrain)
    export(ExportConfig)      → a knowledge bundle, or a version written straight into GKC's store
    publish(PublishConfig)    → a GKC version (REST upload; gkc.publishing, torch-free)
    train(TrainJob)           → a downstream model artifact      (trainer.pipeline_downstream)
    evaluate(EvaluateJob)     → its GAUC / AUC on a log

The ``keep`` CLI only parses arguments into these configs and prints what they return; ``keep demo``
calls them directly. Each step owns the torchrun process group it needs (a no-op outside torchrun) and
returns a summary that the CLI prints as one JSON line. Errors are :class:`services.errors.KeepError`
subclasses (user errors are :class:`services.errors.InvalidArgument`), which the CLI turns into one line
and exit status 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gkc.publishing import PublishConfig, PublishOutcome, publish
from services.errors import InvalidArgument
from trainer.pipeline_downstream import EvaluateJob, KnowledgeSource, TrainJob, evaluate, train
from trainer.pretrain import PretrainConfig
from trainer.train import TrainConfig

if TYPE_CHECKING:
    from trainer.export_delta import NewExport

__all__ = [
    "EvaluateJob",
    "ExportConfig",
    "KnowledgeSource",
    "PretrainConfig",
    "PublishConfig",
    "PublishOutcome",
    "TrainConfig",
    "TrainJob",
    "evaluate",
    "export",
    "pretrain",
    "publish",
    "train",
]


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise InvalidArgument(f"{name} must be positive, got {value}")


def pretrain(cfg: PretrainConfig, *, threads: int = 1) -> dict[str, Any]:
    """Pre-train (resume, or continue from ``cfg.init``) an extractor; rank 0's summary, ``{}`` on others."""
    from trainer import pretrain as pretrain_mod
    from trainer.distributed import from_env, set_threads, shutdown

    _positive("--batch-size", cfg.batch_size)
    _positive("--checkpoint-every", cfg.checkpoint_every)
    _positive("--max-passes", cfg.max_passes)
    _positive("--patience", cfg.patience)
    set_threads(threads)
    group = from_env()  # a no-op outside torchrun
    try:
        result = pretrain_mod.pretrain(cfg, group=group)
    finally:
        shutdown(group)
    if not group.is_writer:
        return {}
    return {
        "out": str(result.out),
        "window": list(result.window),
        "trained_days": result.trained_days,
        "rows": result.rows,
        "seconds": round(result.seconds, 2),
        "metrics": result.metrics,
        "world_size": group.world,
        **({"shards": result.shards} if result.shards else {}),
        **({"already_done": True} if result.already_done else {}),
    }


@dataclass(frozen=True)
class ExportConfig:
    """``out`` (a bundle directory) or ``gkc_redis`` (GKC's store; sharded under torchrun), not both."""

    extractor: Path
    out: Path | None = None
    gkc_redis: str | None = None
    gkc_redis_cluster: bool = False
    #: Ready versions GKC keeps (``GKC_MAX_READY_VERSIONS``); only for ``gkc_redis``.
    max_ready: int = 5
    #: The log whose histories are exported (default: the one the extractor was trained on).
    super_path: Path | None = None
    batch_size: int = 4096
    threads: int = 1
    progress: bool = True
    #: How the vectors are stored: float32, float16 or int8 (per-row scale; docs/gkc.md).
    dtype: str = "float32"
    #: A delta over this GKC version (only with ``out``; :mod:`trainer.export_delta`), or None (full).
    base: int | None = None
    #: The bundle ``base`` was published from (its checksum must be the version's).
    base_bundle: Path | None = None
    #: What makes an entry changed: ``moved`` (by more than ``epsilon``, 0 = any bit), ``seen`` or
    #: ``seen-pairs`` (:mod:`trainer.export_delta`).
    changed: str = "moved"
    epsilon: float = 0.0
    #: GKC's REST API, where the base's identity is read.
    gkc_api: str | None = None


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the knowledge of a ``serving`` extractor; rank 0's summary, ``{}`` on the other ranks."""
    _positive("--batch-size", cfg.batch_size)
    _positive("--max-ready", cfg.max_ready)
    if (cfg.out is None) == (cfg.gkc_redis is None):
        raise InvalidArgument("give --out DIR (a bundle) or --gkc-redis URL (publish into GKC's store)")
    from trainer.distributed import set_threads

    set_threads(cfg.threads)
    if cfg.gkc_redis is not None:
        return _export_to_store(cfg, cfg.gkc_redis)
    assert cfg.out is not None
    from trainer.export_delta import NewExport

    new = NewExport(
        cfg.extractor,
        super_path=cfg.super_path,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        dtype=cfg.dtype,
    )
    if cfg.base is not None:
        return _export_delta(cfg, cfg.out, new)
    path, stats = new.write(cfg.out)
    return {"bundle": str(path), "dtype": cfg.dtype, **stats.to_json()}


def _export_delta(cfg: ExportConfig, out: Path, new: NewExport) -> dict[str, Any]:
    from gkc.publishing import DEFAULT_GKC_API
    from trainer.export_delta import DeltaSpec, export_delta

    if cfg.base is None or cfg.base_bundle is None:
        raise InvalidArgument("--base V needs --base-bundle DIR: the bundle version V was published from")
    spec = DeltaSpec(
        base=cfg.base,
        base_bundle=cfg.base_bundle,
        api_url=cfg.gkc_api or os.environ.get("GKC_API_URL") or DEFAULT_GKC_API,
        rule=cfg.changed,
        epsilon=cfg.epsilon,
    )
    return export_delta(new, out, spec)


def _export_to_store(cfg: ExportConfig, url: str) -> dict[str, Any]:
    """Every rank computes its span of the blocks and writes it; rank 0 begins and finalises the version.
    With ``base``: a delta of the rule's entries over that version (:mod:`trainer.export_store_delta`)."""
    from gkc.redis_store import RedisStore
    from trainer.distributed import from_env, shutdown
    from trainer.export import check_exportable, user_filter
    from trainer.export_scan import LogDigest
    from trainer.export_store import export_to_store
    from trainer.export_store_delta import StoreDelta, store_delta
    from trainer.models.checkpoint import load_extractor

    group = from_env()  # a no-op outside torchrun
    store = RedisStore(url, cluster=cfg.gkc_redis_cluster, timeout_s=10.0)
    try:
        delta: StoreDelta | None = None
        if cfg.base is not None:
            if cfg.base_bundle is not None or cfg.epsilon:
                raise InvalidArgument(
                    "--base with --gkc-redis reads the base from GKC's store (no --base-bundle) and takes "
                    "--changed seen or seen-pairs (no --epsilon)"
                )
            delta = store_delta(
                cfg.extractor,
                store,
                store,
                base=cfg.base,
                rule=cfg.changed,
                super_path=cfg.super_path,
                group=group,
                batch_size=cfg.batch_size,
            )
        # Each rank reads its range of users' rows of the user table and their clicks and pairs alone
        # (a delta's: its share of the seen users, trainer.export_store_delta.user_range).
        span = delta.positions if delta is not None else None
        ext = load_extractor(
            cfg.extractor, user_part=lambda n: span if span is not None else group.span(n, cfg.batch_size)
        )
        check_exportable(ext)
        source = Path(cfg.super_path or ext.config.data.super)
        digest = LogDigest.scan(source, ext.window[1], users=user_filter(ext))  # streamed, this rank's users
        result, stats = export_to_store(
            ext,
            digest,
            store,
            source=source,
            group=group,
            batch_size=cfg.batch_size,
            max_ready=cfg.max_ready,
            progress=cfg.progress,
            dtype=cfg.dtype,
            delta=delta,
        )
    finally:
        store.close()
        shutdown(group)
    if not group.is_writer:
        return {}
    return {
        "version": result.version,
        "retired": result.retired,
        "entries": result.entries,
        "world_size": group.world,
        **stats.to_json(),
    }
