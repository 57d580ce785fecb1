"""A trained downstream model on disk: what ``keep train`` writes, ``keep evaluate`` and the ranker load.

Layout of a model directory::

    artifact.json   format, task, model config (with max_len), knowledge {name: spec}, training info
    vocabs.json     the model's id vocabularies (:class:`contract.ids.Vocabs` JSON)
    state.pt        torch state dict (loaded with ``weights_only=True``)

Written atomically (temp dir, then rename). Format 1 (before the config carried ``max_len``; it sat in an
untyped ``info`` dict) is still read; an artifact that does not say its ``max_len`` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.downstream import DownstreamConfig
from contract.ids import Vocabs
from contract.knowledge import KnowledgeMismatch, KnowledgeSchema, KnowledgeSpec
from contract.schema import require_task
from services.errors import InvalidArgument

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
ARTIFACT_JSON = "artifact.json"
VOCABS_JSON = "vocabs.json"
STATE_FILE = "state.pt"


class ArtifactError(InvalidArgument):
    """A model directory that is missing, malformed or from an unknown format."""


@dataclass(frozen=True)
class TrainingInfo:
    """How the model was trained (provenance; nothing here changes how it scores)."""

    rows: int = 0
    epochs: int = 0
    batch_size: int = 0
    lr: float = 0.0
    seed: int = 0
    warm_start: bool = False
    world_size: int = 1
    days: tuple[int, ...] = ()
    #: The log it was trained on ("" when unknown).
    train_file: str = ""
    #: Random weights made for tests and benchmarks, not trained.
    synthetic: bool = False
    #: Per knowledge plug-in: the share of rows whose user / item / user_category knowledge was found.
    coverage: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "days": list(self.days)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "days" in known:
            known["days"] = tuple(int(d) for d in known["days"])
        return cls(**known)


@dataclass
class Artifact:
    config: DownstreamConfig
    task: str
    vocabs: Vocabs
    state: dict[str, torch.Tensor]
    knowledge: dict[str, KnowledgeSpec] = field(default_factory=dict)
    training: TrainingInfo = field(default_factory=TrainingInfo)
    created: float = 0.0

    @property
    def max_len(self) -> int:
        """Behaviour-sequence length the model was trained with (evaluation and serving use it)."""
        return self.config.max_len

    def require_knowledge(
        self, name: str, schema: KnowledgeSchema | None, version: int | None = None
    ) -> None:
        """Refuse to run this model on knowledge that is not what it was trained with."""
        spec = self.knowledge.get(name)
        if spec is None:
            if schema is not None:
                raise KnowledgeMismatch(f"the model has no plug-in {name!r} for the knowledge offered")
            return
        if schema is None:
            raise KnowledgeMismatch(f"the model needs knowledge {name!r} ({spec.schema.describe()})")
        spec.schema.require(schema, what=f"knowledge {name!r}")
        if version is not None and spec.version and version != spec.version:
            raise KnowledgeMismatch(
                f"knowledge {name!r}: the model is pinned to version {spec.version}, offered {version}"
            )

    @property
    def pinned_version(self) -> int:
        """The GKC version the model's knowledge is pinned to (0: no pinned knowledge)."""
        return max((spec.version for spec in self.knowledge.values()), default=0)


def save(artifact: Artifact, out: str | os.PathLike[str]) -> Path:
    target = Path(out)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "task": artifact.task,
        "config": artifact.config.to_json(),
        "knowledge": {k: v.to_json() for k, v in artifact.knowledge.items()},
        "training": artifact.training.to_json(),
        "created": artifact.created or time.time(),
    }
    (tmp / ARTIFACT_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
    (tmp / VOCABS_JSON).write_text(json.dumps(artifact.vocabs.to_json()))
    torch.save({k: v.detach().cpu() for k, v in artifact.state.items()}, tmp / STATE_FILE)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _config(meta: dict[str, Any], source: Path) -> DownstreamConfig:
    data = dict(meta["config"])
    if int(meta["format_version"]) == 1:  # max_len lived in the untyped info dict
        if "max_len" not in meta.get("info", {}):
            raise ArtifactError(f"{source}: format 1 artifact without max_len; retrain it")
        data["max_len"] = int(meta["info"]["max_len"])
        return DownstreamConfig.from_json(data)
    return DownstreamConfig.from_json(data)


def load(path: str | os.PathLike[str]) -> Artifact:
    root = Path(path)
    meta_file = root / ARTIFACT_JSON
    if not meta_file.is_file():
        raise ArtifactError(f"{root}: not a model artifact (no {ARTIFACT_JSON})")
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") not in READABLE_FORMATS:
            raise ArtifactError(
                f"{meta_file}: format_version {meta.get('format_version')!r} is not supported"
            )
        config = _config(meta, meta_file)
        knowledge = {k: KnowledgeSpec.from_json(v) for k, v in meta.get("knowledge", {}).items()}
        training = TrainingInfo.from_json(meta.get("training", meta.get("info", {})))
        vocabs = Vocabs.from_json(json.loads((root / VOCABS_JSON).read_text()))
        task = require_task(str(meta["task"]))
        state = torch.load(root / STATE_FILE, map_location="cpu", weights_only=True)
    except ArtifactError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, InvalidArgument) as err:
        raise ArtifactError(f"{root}: unreadable model artifact ({err!r})") from err
    if set(knowledge) != set(config.plugins):
        raise ArtifactError(f"{root}: plug-ins {sorted(config.plugins)} but knowledge {sorted(knowledge)}")
    return Artifact(
        config=config,
        task=task,
        vocabs=vocabs,
        state=state,
        knowledge=knowledge,
        training=training,
        created=float(meta.get("created", 0.0)),
    )
