"""What GKC remembers outside Redis, and the checks that keep a lost or damaged version from being served.

:class:`Shadow` is a small JSON file in ``GKC_DATA_DIR`` kept by the main process: the highest version
number ever seen (so a number is never handed out twice, even after Redis lost its data), the registry's
epoch, the identity of every version that was ready, and the publish ids of versions that were deleted
(tombstones). :func:`reconcile` compares the registry with it at start:

- the registry's epoch changed or vanished → Redis lost or replaced its data: logged as an error;
- a version the shadow knew as ready is missing → listed as ``damaged`` ("lost"), never served;
- a deleted version is back (an older AOF/RDB was loaded) → ``damaged``, never served again;
- every ready version is verified: its key count against the registry's, and a sample of entries read
  back against the digests recorded at publish (:func:`check_versions`) → ``damaged`` on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from contract.knowledge import Dims
from gkc.store import (
    DAMAGED,
    READY,
    RETIRING,
    KnowledgeReader,
    KnowledgeWriter,
    VersionIdentity,
    VersionRecord,
    VersionRegistry,
)

log = logging.getLogger(__name__)

SHADOW_FILE = "registry-shadow.json"
#: Tombstones kept (publish ids of deleted versions); older ones are forgotten.
MAX_TOMBSTONES = 10_000


class IntegrityStore(KnowledgeReader, VersionRegistry, KnowledgeWriter, Protocol):
    """The checks read entries, count keys and mark versions."""


@dataclass
class Shadow:
    """The registry's shadow; ``path`` None = kept in memory only (tests, ephemeral deployments)."""

    path: Path | None = None
    epoch: str | None = None
    floor: int = 0
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    tombstones: list[str] = field(default_factory=list)
    #: The janitor and the REST threads both update it.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def open(cls, data_dir: Path | None) -> Shadow:
        if data_dir is None:
            return cls()
        path = Path(data_dir) / SHADOW_FILE
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                path,
                epoch=data.get("epoch"),
                floor=int(data.get("floor", 0)),
                versions={int(k): v for k, v in data.get("versions", {}).items()},
                tombstones=list(data.get("tombstones", [])),
            )
        except (ValueError, TypeError, AttributeError) as err:
            log.error("%s is unreadable (%s); starting a new shadow of the registry", path, err)
            return cls(path)

    def save(self) -> None:
        if self.path is None:
            return
        with self.lock:
            self._save(self.path)

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "epoch": self.epoch,
            "floor": self.floor,
            "versions": {str(k): v for k, v in sorted(self.versions.items())},
            "tombstones": self.tombstones[-MAX_TOMBSTONES:],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, sort_keys=True))
        os.replace(tmp, path)

    def observe(self, records: Sequence[VersionRecord], epoch: str | None) -> bool:
        """Take in what the registry holds now; returns whether anything changed (then save)."""
        with self.lock:
            return self._observe(records, epoch)

    def _observe(self, records: Sequence[VersionRecord], epoch: str | None) -> bool:
        """Ready versions are remembered; a retiring one is tombstoned and forgotten (every deletion
        goes through ``retiring``). A remembered version that vanished is kept: it was lost, and
        :func:`record_lost` lists it."""
        before = (self.epoch, self.floor, len(self.versions), len(self.tombstones))
        if epoch is not None and self.epoch is not None and epoch != self.epoch:
            return False  # another registry: reconcile() decides what is lost
        self.epoch = epoch or self.epoch
        for r in records:
            self.floor = max(self.floor, r.version)
            if r.state == READY:
                self.versions[r.version] = {
                    "publish_id": r.identity.publish_id,
                    "checksum": r.identity.checksum,
                    "dims": vars(r.dims),
                }
            elif r.state == RETIRING:
                self._tombstone(r.identity.publish_id)
                self.versions.pop(r.version, None)
            elif r.state == DAMAGED:
                self.versions.pop(r.version, None)
        return before != (self.epoch, self.floor, len(self.versions), len(self.tombstones))

    def tombstone(self, publish_id: str) -> None:
        with self.lock:
            self._tombstone(publish_id)

    def _tombstone(self, publish_id: str) -> None:
        if publish_id not in self.tombstones:
            self.tombstones.append(publish_id)
            del self.tombstones[:-MAX_TOMBSTONES]


def record_lost(store: IntegrityStore, shadow: Shadow, records: Sequence[VersionRecord]) -> list[str]:
    """List every version the shadow knew as ready that the registry lacks as ``damaged`` ("lost")."""
    known = {r.version for r in records}
    problems = []
    for number, seen in sorted(shadow.versions.items()):
        if number not in known:
            identity = VersionIdentity(number, seen["publish_id"], seen["checksum"])
            reason = (
                "lost: Redis no longer has this version (data loss, eviction, a missing or truncated AOF)"
            )
            store.record_lost(identity, Dims(**seen["dims"]), reason)
            problems.append(f"{identity} {reason}")
    return problems


def reconcile(store: IntegrityStore, shadow: Shadow, *, sample: bool = True) -> list[str]:
    """The start-up check (see the module docstring); returns one line per problem found."""
    view = store.view()
    problems: list[str] = []
    if shadow.epoch is not None and view.epoch != shadow.epoch:
        problems.append(
            f"Redis lost or replaced its data: the registry's epoch is {view.epoch!r}, was {shadow.epoch!r} "
            "(a missing or truncated AOF, a FLUSHALL, another Redis)"
        )
    records, _ = store.records()
    problems += record_lost(store, shadow, records)
    for r in records:
        if r.identity.publish_id in shadow.tombstones and r.state in (READY, DAMAGED):
            reason = "deleted before; it reappeared when Redis loaded older data"
            if r.state == READY:
                store.mark_damaged(r.version, reason)
            problems.append(f"{r.identity}: {reason}")
    records, _ = store.records()
    problems += check_versions(store, [r for r in records if r.state == READY], sample=sample)
    shadow.floor = max([shadow.floor, *(r.version for r in records)])
    shadow.epoch = None  # the registry as it is now is the one to follow
    shadow.observe(records, store.ensure_epoch())
    shadow.save()
    for line in problems:
        log.error("integrity: %s", line)
    return problems


def check_versions(
    store: IntegrityStore, records: Sequence[VersionRecord], *, sample: bool = True
) -> list[str]:
    """Key counts (one pass over the keyspace) and sampled read-back of ``records`` (every ready
    version); failing versions are marked ``damaged``, and so is a delta whose base is not among the
    intact ones. Returns one line per damaged version."""
    if not records:
        return []
    counts = store.count_keys([r.namespace for r in records])
    problems = []
    bad: set[int] = set()
    for r in records:
        reason = None
        if r.keys and counts.get(r.namespace, 0) != r.keys:
            reason = f"damaged: {counts.get(r.namespace, 0)} keys in Redis, {r.keys} published"
        elif sample:
            reason = _sample_mismatch(store, r)
        if reason is not None:
            store.mark_damaged(r.version, reason)
            problems.append(f"{r.identity} {reason}")
            bad.add(r.version)
    intact = {r.identity for r in records if r.version not in bad}
    for r in records:
        if r.base is not None and r.version not in bad and r.base not in intact:
            reason = f"damaged: its base {r.base} is not ready (lost, damaged or replaced)"
            store.mark_damaged(r.version, reason)
            problems.append(f"{r.identity} {reason}")
    return problems


def entry_digest(value: bytes | None) -> str | None:
    """What a publish records per sampled entry and the integrity check compares (None = missing)."""
    return None if value is None else hashlib.sha256(value).hexdigest()[:16]


def _sample_mismatch(store: KnowledgeReader, r: VersionRecord) -> str | None:
    _digest = entry_digest
    ns, s = r.namespace, r.sample
    for uid, want in s.get("users", []):
        if _digest(store.read(ns, uid, [], []).user) != want:
            return f"damaged: K̂_u of {uid!r} does not read back as published"
    for uid, cid, want in s.get("ucs", []):
        if _digest(store.read(ns, uid, [cid], []).ucs[0]) != want:
            return f"damaged: K̂_uc of ({uid!r}, {cid!r}) does not read back as published"
    items = s.get("items", [])
    if items:
        values = store.read(ns, "\x00", [], [i for i, _ in items]).items
        for (iid, want), got in zip(items, values, strict=True):
            if _digest(got) != want:
                return f"damaged: K̂_i of {iid!r} does not read back as published"
    return None
