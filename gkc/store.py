"""The storage interface the GKC core talks to. The core never imports redis; ``gkc.redis_store`` does.

A *version* is an immutable namespace of vectors. Its life::

    staging ──(all data written and verified: one atomic registry update)──▶ ready ──▶ retiring ──▶ gone
       └──(publisher died: lease expired)──▶ retiring

Only ``ready`` versions can be read or activated. The *active* pointer names the version that answers
requests for version 0; it always points at a ready version once the first one is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

STAGING = "staging"
READY = "ready"
RETIRING = "retiring"
STATES = (STAGING, READY, RETIRING)


@dataclass(frozen=True)
class VersionRecord:
    version: int
    state: str
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Unix time of the last publisher heartbeat (staging) or of the last state change.
    updated: float = 0.0

    def to_json(self, active: int | None) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "active": self.version == active,
            "updated": self.updated,
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class RawRead:
    """Raw float32 bytes as stored; ``None`` where a key or field does not exist."""

    user: bytes | None
    ucs: list[bytes | None]
    items: list[bytes | None]


class KnowledgeStore(Protocol):
    """What a backend provides. Implementations raise :class:`services.errors.Unavailable` when down."""

    # --- reads (one round trip per node) ---------------------------------------------------------
    def read(
        self, version: int, user_id: str, category_ids: Sequence[str], item_ids: Sequence[str]
    ) -> RawRead: ...

    # --- registry -------------------------------------------------------------------------------
    def versions(self) -> tuple[list[VersionRecord], int | None]:
        """All known versions (any state) and the active version."""
        ...

    def begin(self, manifest: dict[str, Any]) -> int:
        """Allocate a new version number in state ``staging``."""
        ...

    def heartbeat(self, version: int) -> None: ...

    def finish(self, version: int, max_ready: int) -> list[int]:
        """Atomically staging → ready (and active if none is); retire the oldest non-active versions
        beyond ``max_ready``. Returns the retired version numbers."""
        ...

    def activate(self, version: int) -> None: ...

    def retire(self, version: int) -> None:
        """ready/staging → retiring; raises Conflict for the active version, NotFound if unknown."""
        ...

    def abandon_stale(self, lease_s: float) -> list[int]:
        """Staging versions without a heartbeat for ``lease_s`` → retiring. Returns them."""
        ...

    # --- bulk data ------------------------------------------------------------------------------
    def write_users(
        self,
        version: int,
        user_ids: np.ndarray,
        user_vectors: np.ndarray | None,
        category_ids: np.ndarray | None,
        uc_vectors: np.ndarray | None,
    ) -> int:
        """Write K̂_u rows (``category_ids is None``) or K̂_uc rows; returns entries newly written."""
        ...

    def write_items(self, version: int, item_ids: np.ndarray, vectors: np.ndarray) -> int: ...

    def delete_version_data(self, version: int, batch: int = 1000) -> int:
        """Remove a version's keys in batches (never one blocking call); returns keys removed."""
        ...

    def forget(self, version: int) -> None:
        """Drop a retiring version's registry entry once its data is gone."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
