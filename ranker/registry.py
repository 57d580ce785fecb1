"""Loaded models by name, hot-reloaded from a directory and swapped atomically.

Layout of ``RANKER_MODEL_DIR`` (either form):

- one artifact (``artifact.json`` inside, e.g. the ``current`` symlink the knowledge job flips): one
  model, named after its task (``click``, ``conversion``, ``cart``);
- a directory of artifacts or symlinks to artifacts (``ctr/``, ``cvr -> cvr-v7-2024…``): one model per
  entry, named after the entry. Hidden entries and ``*.tmp-*`` (artifacts being written) are skipped.

Swapping: :meth:`ModelRegistry.reload` fingerprints every entry (resolved path + mtimes of its files),
loads only what changed (and warms it up) *before* publishing a new name → snapshot dict in one
assignment. A request takes one :class:`ModelSnapshot` and uses it end to end, so a swap never mixes
two models in one answer and never drops an in-flight request. A broken new artifact is logged once
and the old model keeps serving; an entry that vanishes is dropped only when it is still missing on the
next scan (an in-place rewrite removes the directory for a moment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import artifact as artifact_mod
from ranker.scoring import Scorer
from services.errors import NotFound

log = logging.getLogger(__name__)

_FILES = (artifact_mod.ARTIFACT_JSON, artifact_mod.STATE_FILE, artifact_mod.VOCABS_JSON)


@dataclass(frozen=True)
class ModelSnapshot:
    name: str
    path: Path
    revision: str
    fingerprint: tuple[Any, ...]
    scorer: Scorer
    loaded_at: float = field(default_factory=time.time)

    @property
    def task(self) -> str:
        return self.scorer.artifact.task

    @property
    def knowledge_version(self) -> int:
        return self.scorer.knowledge_version

    @property
    def knowledge_publish_id(self) -> str:
        """The publish the model was trained on ("" when trained from a bundle or before identities)."""
        spec = self.scorer.knowledge
        return spec[1].publish_id if spec else ""

    def describe(self) -> dict[str, Any]:
        spec = self.scorer.knowledge
        return {
            "name": self.name,
            "task": self.task,
            "path": str(self.path),
            "revision": self.revision,
            "knowledge_version": self.knowledge_version,
            "knowledge_schema": spec[1].schema.to_json() if spec else None,
            "max_len": self.scorer.max_len,
            "loaded_at": round(self.loaded_at, 3),
        }


def fingerprint(path: Path) -> tuple[Any, ...]:
    resolved = path.resolve()
    stamps = []
    for name in _FILES:
        try:
            st = (resolved / name).stat()
            stamps.append((name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append((name, 0, 0))
    return (str(resolved), *stamps)


def scan(model_dir: Path) -> dict[str, Path]:
    """Model name → artifact directory, for both layouts."""
    if (model_dir / artifact_mod.ARTIFACT_JSON).is_file():
        try:
            task = json.loads((model_dir / artifact_mod.ARTIFACT_JSON).read_text())["task"]
        except (OSError, ValueError, KeyError):
            task = model_dir.resolve().name
        return {str(task): model_dir}
    if not model_dir.is_dir():
        return {}
    found = {}
    for entry in sorted(model_dir.iterdir()):
        if entry.name.startswith(".") or ".tmp-" in entry.name:
            continue
        if (entry / artifact_mod.ARTIFACT_JSON).is_file():
            found[entry.name] = entry
    return found


class ModelRegistry:
    def __init__(
        self,
        model_dir: Path,
        *,
        default_model: str = "",
        features_max_len: int = 0,
        torchscript: bool = False,
        on_change: Callable[[list[ModelSnapshot]], None] | None = None,
        on_load: Callable[[str], None] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.default_model = default_model
        self.features_max_len = features_max_len
        self.torchscript = torchscript
        self._on_change = on_change
        self._on_load = on_load
        self._models: dict[str, ModelSnapshot] = {}
        self._missing: set[str] = set()
        self._failed: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    # -- reads (any thread, lock-free: the dict is replaced, never mutated) --

    def get(self, name: str = "") -> ModelSnapshot:
        models = self._models
        key = name or self.default_name(models)
        snapshot = models.get(key) if key else None
        if snapshot is None:
            if not models:
                raise NotFound(f"no model is loaded (model dir {self.model_dir})")
            raise NotFound(f"unknown model {name or key!r}; loaded: {', '.join(sorted(models))}")
        return snapshot

    def default_name(self, models: dict[str, ModelSnapshot] | None = None) -> str:
        models = self._models if models is None else models
        if self.default_model:
            return self.default_model
        if "click" in models:
            return "click"
        return min(models) if models else ""

    def snapshots(self) -> list[ModelSnapshot]:
        return [self._models[k] for k in sorted(self._models)]

    # -- reload (serialised) --

    def reload(self) -> dict[str, Any]:
        """Scan the model directory and swap in what changed. Returns what happened, for logs and admin."""
        with self._lock:
            return self._reload()

    def _reload(self) -> dict[str, Any]:
        current = self._models
        entries = scan(self.model_dir)
        new: dict[str, ModelSnapshot] = {}
        report: dict[str, Any] = {"loaded": [], "failed": {}, "removed": [], "unchanged": []}
        for name, path in entries.items():
            fp = fingerprint(path)
            old = current.get(name)
            if old is not None and old.fingerprint == fp:
                new[name] = old
                report["unchanged"].append(name)
                continue
            try:
                new[name] = self._load(name, path, fp)
                self._failed.pop(name, None)
                report["loaded"].append(name)
            except Exception as err:  # any broken artifact (artifact.load lets UnpicklingError through)
                report["failed"][name] = str(err)
                if self._failed.get(name) != fp:  # log a broken artifact once, not every poll
                    log.error("model %r at %s failed to load, keeping the previous one: %s", name, path, err)
                    self._failed[name] = fp
                    if self._on_load:
                        self._on_load("failed")
                if old is not None:
                    new[name] = old
        for name, old in current.items():
            if name in new:
                continue
            if name not in self._missing:  # first miss: keep it one more scan
                self._missing.add(name)
                new[name] = old
            else:
                report["removed"].append(name)
                log.warning("model %r is gone from %s; unloaded", name, self.model_dir)
                if self._on_load:
                    self._on_load("removed")
        self._missing &= set(new) - set(entries)
        changed = set(new) != set(current) or any(new[k] is not current.get(k) for k in new)
        if changed:
            self._models = new  # the atomic swap
            if self._on_change:
                self._on_change(self.snapshots())
        report["models"] = sorted(new)
        return report

    def _load(self, name: str, path: Path, fp: tuple[Any, ...]) -> ModelSnapshot:
        started = time.perf_counter()
        resolved = path.resolve()
        art = artifact_mod.load(resolved)
        scorer = Scorer(art, torchscript=self.torchscript)
        if self.features_max_len and self.features_max_len < scorer.max_len:
            log.warning(
                "model %r uses histories of %d but the feature store keeps %d clicks per user "
                "(RANKER_FEATURES_MAX_LEN)",
                name,
                scorer.max_len,
                self.features_max_len,
            )
        scorer.warm_up()
        revision = f"{resolved.name}-{hashlib.sha1(repr(fp).encode()).hexdigest()[:8]}"
        log.info(
            "model %r loaded from %s (revision %s, task %s, knowledge version %d) in %.2fs",
            name,
            resolved,
            revision,
            art.task,
            scorer.knowledge_version,
            time.perf_counter() - started,
        )
        if self._on_load:
            self._on_load("loaded")
        return ModelSnapshot(name=name, path=resolved, revision=revision, fingerprint=fp, scorer=scorer)
