"""A trained downstream model on disk: what ``keep train`` writes and the ranker and ``keep evaluate`` load.

Layout of a model directory::

    artifact.json   format, task, model config, knowledge {name: {schema, version, source}}, training info
    vocabs.json     id vocabularies (the trainer's ``Vocab`` JSON: sorted keys; index = 2 + position)
    state.pt        torch state dict (loaded with ``weights_only=True``)

Written atomically (temp dir, then rename). The ranker must not import ``trainer``, so :class:`IdVocab`
re-implements the vocabulary lookup on the same JSON (PAD 0, OOV 1, int and str ids interchangeable).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranker.knowledge import KnowledgeMismatch, KnowledgeSchema
from ranker.model import DownstreamConfig, DownstreamModel
from services.errors import InvalidArgument

FORMAT_VERSION = 1
ARTIFACT_JSON = "artifact.json"
VOCABS_JSON = "vocabs.json"
STATE_FILE = "state.pt"
OOV = 1
RESERVED = 2


class ArtifactError(InvalidArgument):
    """A model directory that is missing, malformed or from an unknown format."""


@dataclass(frozen=True)
class IdVocab:
    """Raw id → embedding row, from the trainer's ``Vocab`` JSON (keys sorted, as ``np.unique`` made them)."""

    keys: np.ndarray

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdVocab:
        dtype = np.int64 if data["kind"] == "int" else str
        return cls(keys=np.asarray(data["keys"], dtype=dtype))

    def __len__(self) -> int:
        return len(self.keys) + RESERVED

    def lookup(self, values: Any) -> np.ndarray:
        arr = np.asarray(values)
        keys = self.keys
        if (arr.dtype.kind in "iu") != (keys.dtype.kind in "iu"):
            keys_str = keys.astype(np.int64).astype(str) if keys.dtype.kind in "iu" else keys.astype(str)
            arr = arr.astype(np.int64).astype(str) if arr.dtype.kind in "iu" else arr.astype(str)
            order = np.argsort(keys_str)
            keys, perm = keys_str[order], order
        else:
            perm = None
        if len(keys) == 0:
            return np.full(arr.shape, OOV, dtype=np.int64)
        pos = np.clip(np.searchsorted(keys, arr), 0, len(keys) - 1)
        hit = keys[pos] == arr
        idx = pos if perm is None else perm[pos]
        return np.where(hit, idx + RESERVED, OOV).astype(np.int64)


@dataclass(frozen=True)
class KnowledgeSpec:
    """One plug-in's knowledge: its schema and, for GKC knowledge, the pinned version."""

    schema: KnowledgeSchema
    version: int = 0
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema.to_json(), "version": self.version, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnowledgeSpec:
        return cls(
            schema=KnowledgeSchema.from_json(data["schema"]),
            version=int(data.get("version", 0)),
            source=dict(data.get("source", {})),
        )


@dataclass
class Artifact:
    config: DownstreamConfig
    task: str
    vocabs: dict[str, Any]  # the trainer's Vocabs.to_json()
    state: dict[str, torch.Tensor]
    knowledge: dict[str, KnowledgeSpec] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> DownstreamModel:
        model = DownstreamModel(self.config)
        model.load_state_dict(self.state)
        model.eval()
        return model

    def id_vocab(self, name: str) -> IdVocab | None:
        data = self.vocabs.get(name)
        return IdVocab.from_json(data) if data else None

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
        "info": artifact.info,
        "created": time.time(),
    }
    (tmp / ARTIFACT_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
    (tmp / VOCABS_JSON).write_text(json.dumps(artifact.vocabs))
    torch.save({k: v.detach().cpu() for k, v in artifact.state.items()}, tmp / STATE_FILE)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def load(path: str | os.PathLike[str]) -> Artifact:
    root = Path(path)
    meta_file = root / ARTIFACT_JSON
    if not meta_file.is_file():
        raise ArtifactError(f"{root}: not a model artifact (no {ARTIFACT_JSON})")
    try:
        meta = json.loads(meta_file.read_text())
        if int(meta.get("format_version", -1)) != FORMAT_VERSION:
            raise ArtifactError(
                f"{meta_file}: format_version {meta.get('format_version')!r} is not supported"
            )
        config = DownstreamConfig.from_json(meta["config"])
        knowledge = {k: KnowledgeSpec.from_json(v) for k, v in meta.get("knowledge", {}).items()}
        vocabs = json.loads((root / VOCABS_JSON).read_text())
        state = torch.load(root / STATE_FILE, map_location="cpu", weights_only=True)
    except ArtifactError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ArtifactError(f"{root}: unreadable model artifact ({err!r})") from err
    if set(knowledge) != set(config.plugins):
        raise ArtifactError(f"{root}: plug-ins {sorted(config.plugins)} but knowledge {sorted(knowledge)}")
    return Artifact(
        config=config,
        task=str(meta["task"]),
        vocabs=vocabs,
        state=state,
        knowledge=knowledge,
        info=dict(meta.get("info", {})),
    )
