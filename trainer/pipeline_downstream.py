"""Stage 2 of the pipeline API (:mod:`trainer.pipeline`): train and evaluate a downstream model.

:class:`KnowledgeSource` says where the knowledge is read (GKC's gRPC address or a local bundle),
:class:`TrainJob` / :class:`EvaluateJob` what to do; :func:`train` and :func:`evaluate` return the
summary the CLI prints. The knowledge version a model trains with is probed once and pinned in the
artifact; evaluation reads exactly that version again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import InvalidArgument
from trainer.train import TrainConfig


@dataclass(frozen=True)
class KnowledgeSource:
    """GKC's gRPC read address (``host:port``) or a bundle directory; one of the two."""

    gkc: str | None = None
    bundle: Path | None = None
    timeout_s: float = 5.0

    def open(self, version: int) -> Any:
        """A reader with ``batch_get`` (:class:`gkc.GkcClient` or :class:`gkc.BundleReader`), or ``None``."""
        if self.bundle and self.gkc:
            raise InvalidArgument("give --gkc or --bundle, not both")
        if self.gkc and "://" in self.gkc:
            raise InvalidArgument(
                f"--gkc takes GKC's gRPC address host:port (e.g. 127.0.0.1:50051), got {self.gkc!r}; "
                "the http:// URL is the REST API that keep publish/versions take as --gkc-api"
            )
        if self.bundle:
            from gkc.bundle_reader import BundleReader

            return BundleReader.open(self.bundle, version=version)
        if self.gkc:
            from gkc.client import GkcClient

            return GkcClient(self.gkc, timeout_s=self.timeout_s)
        return None


@dataclass(frozen=True)
class TrainJob:
    train: Path
    out: Path
    #: ``None``: the base model, no plug-in.
    knowledge: KnowledgeSource | None
    #: The knowledge version to pin (0 = the version active now).
    knowledge_version: int = 0
    #: Yesterday's artifact to warm-start from.
    init: Path | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    threads: int = 1


@dataclass(frozen=True)
class EvaluateJob:
    model: Path
    test: Path
    #: An earlier log whose clicks extend the users' histories.
    train: Path | None = None
    knowledge: KnowledgeSource = field(default_factory=KnowledgeSource)
    threads: int = 1
    progress: bool = True


def gkc_provider(reader: Any, version: int, df: Any, progress: bool) -> Any:
    """Probe the reader once for the version's actual number and block dims, then pin both."""
    from contract.ids import canonical_ids
    from contract.knowledge import Dims, KnowledgeSchema
    from ranker.knowledge import manifest_schema
    from trainer.train import GkcKnowledge

    first = df.iloc[:1]
    lookup = reader.batch_get(
        str(canonical_ids(first["user_id"].to_numpy())[0]),
        canonical_ids(first["item_id"].to_numpy()).tolist(),
        canonical_ids(first["category_id"].to_numpy()).tolist(),
        version,
    )
    du, di, dc = lookup.user.shape[-1], lookup.items.shape[-1], lookup.ucs.shape[-1]
    manifest = getattr(reader, "manifest", None)
    if manifest is not None:
        schema = manifest_schema(manifest)
    else:
        schema = KnowledgeSchema.gkc(Dims(user=du, item=di, uc=dc), interaction=du == di)
    return GkcKnowledge(reader=reader, version=lookup.version or version, schema=schema, progress=progress)


def train(job: TrainJob) -> dict[str, Any]:
    """Train (day by day, warm-started from ``job.init``) and save the artifact; rank 0's summary."""
    from contract import artifact as artifact_mod
    from contract.log import read_log
    from trainer.distributed import from_env, set_threads, shutdown
    from trainer.train import task_rows
    from trainer.train import train as train_model

    set_threads(job.threads)
    df = read_log(job.train)
    providers: list[Any] = []
    if job.knowledge is not None:
        reader = job.knowledge.open(job.knowledge_version)
        if reader is None:
            raise InvalidArgument("knowledge needs --gkc ADDR or --bundle DIR (or pass --no-knowledge)")
        providers.append(gkc_provider(reader, job.knowledge_version, df, job.config.progress))
    init = artifact_mod.load(job.init) if job.init else None
    task_rows(df, job.config.task)  # fail early on a missing label column
    group = from_env()  # a no-op outside torchrun
    try:
        art = train_model(df, job.config, providers, init, train_file=str(job.train), group=group)
    finally:
        shutdown(group)
    if not group.is_writer:
        return {}
    artifact_mod.save(art, job.out)
    return {
        "out": str(job.out),
        "rows": art.training.rows,
        "task": art.task,
        "knowledge": {k: v.to_json() for k, v in art.knowledge.items()},
        "warm_start": art.training.warm_start,
        "world_size": group.world,
    }


def evaluate(job: EvaluateJob) -> dict[str, Any]:
    """GAUC/AUC of an artifact on ``job.test``, reading the knowledge version it pinned."""
    import pandas as pd

    from contract import artifact as artifact_mod
    from contract.log import read_log
    from trainer.distributed import set_threads
    from trainer.evaluate import evaluate as evaluate_model
    from trainer.train import GkcKnowledge

    set_threads(job.threads)
    art = artifact_mod.load(job.model)
    test = read_log(job.test)
    history = pd.concat([read_log(job.train), test], ignore_index=True) if job.train else test
    providers: list[Any] = []
    if art.knowledge:
        reader = job.knowledge.open(art.pinned_version)
        if reader is None:
            raise InvalidArgument(
                f"the model needs knowledge {sorted(art.knowledge)}: give --gkc or --bundle"
            )
        manifest = getattr(reader, "manifest", None)
        for name, spec in art.knowledge.items():
            if manifest is not None:
                from ranker.knowledge import manifest_schema

                art.require_knowledge(name, manifest_schema(manifest))
            providers.append(
                GkcKnowledge(reader, spec.version, spec.schema, name=name, progress=job.progress)
            )
    return dict(evaluate_model(art, test, providers, history_from=history))
