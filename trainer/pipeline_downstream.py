"""Stage 2 of the pipeline API (:mod:`trainer.pipeline`): train and evaluate a downstream model.

:class:`KnowledgeSource` says where the knowledge is read (GKC's gRPC address or a local bundle),
:class:`TrainJob` / :class:`EvaluateJob` what to do; :func:`train` and :func:`evaluate` return the
summary the CLI prints. The knowledge identity a model trains with (version number, publish id, content
checksum) is probed once and pinned in the artifact; evaluation reads exactly that identity again and
refuses other knowledge (:mod:`trainer.knowledge_pin`). Both report and check coverage
(:mod:`trainer.coverage`) and, with ``KnowledgeSource.api_url``, hold a GKC lease while they read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import InvalidArgument
from trainer.coverage import DEFAULT_MIN_COVERAGE
from trainer.knowledge_pin import evaluation_knowledge, knowledge_lease, lease_holder, resolve_pin
from trainer.train import TrainConfig


@dataclass(frozen=True)
class KnowledgeSource:
    """GKC's gRPC read address (``host:port``) or a bundle directory; one of the two."""

    gkc: str | None = None
    bundle: Path | None = None
    timeout_s: float = 5.0
    #: GKC's REST API (``http(s)://host:port``): while reading through ``gkc`` the run holds a lease on
    #: the version it reads there (:func:`trainer.knowledge_pin.knowledge_lease`). ``None``: no lease.
    api_url: str | None = None
    #: The bearer token for the lease (``GKC_API_TOKEN``).
    api_token: str | None = None

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
    #: Refuse when fewer rows have their user or item knowledge found (``trainer.coverage``).
    min_coverage: float = DEFAULT_MIN_COVERAGE


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
        # version 0 (the active one) is resolved here, once, with its publish id and content checksum
        providers.append(resolve_pin(reader, job.knowledge_version, df, job.config.progress))
    init = artifact_mod.load(job.init) if job.init else None
    task_rows(df, job.config.task)  # fail early on a missing label column
    group = from_env()  # a no-op outside torchrun
    try:
        with _lease(job.knowledge, providers, "train"):
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
        "coverage": art.training.coverage,
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
        # the identity the model pins, from GKC and from a bundle alike (else one line, exit 2)
        providers = list(evaluation_knowledge(art, reader, job.progress))
    with _lease(job.knowledge, providers, "evaluate"):
        result = evaluate_model(art, test, providers, history_from=history, min_coverage=job.min_coverage)
    return dict(result)


def _lease(source: KnowledgeSource | None, providers: list[Any], command: str) -> Any:
    """A lease on the versions read through GKC while the block runs (none without ``api_url``)."""
    reading_gkc = source is not None and source.gkc
    api_url = source.api_url if source is not None and reading_gkc else None
    token = source.api_token if source is not None else None
    return knowledge_lease(api_url, token, providers, lease_holder(command))
