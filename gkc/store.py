"""What GKC needs from a store, as narrow protocols (each client depends on what it calls), and the
registry's records.

The core never imports redis; ``gkc.redis_store`` implements every protocol for Redis:

- :class:`KnowledgeReader`: one read of stored rows (one round trip per request): the read path, the
  publisher's read-back, the integrity sample check.
- :class:`VersionView`: the ready versions and the active pointer, which is all a serving process
  (:class:`gkc.serving_view.ServingView`, the read path) reads of the registry.
- :class:`VersionRegistry`: the whole registry (versions, identities, states, the active pointer, pins):
  the publisher, the janitor and the admin operations change it.
- :class:`KnowledgeWriter`: bulk writes of a staging version, deletion and counting of a version's
  keys, memory figures and replication (publisher, janitor, integrity checks).
- :class:`StoreProbe`: is the store up, and its memory (the health monitor).

A *version* is an immutable namespace of vectors with an identity that is never reused
(:class:`VersionIdentity`). Its life::

    staging ──(all data written and verified: one atomic registry update)──▶ ready ──▶ retiring ──▶ gone
       └──(publisher died, publish failed or DELETE)──▶ retiring
    ready ──(integrity check failed: keys missing, values differ)──▶ damaged (listed, never served)

Only ``ready`` versions can be read or activated. The *active* pointer names the version that answers
requests for version 0; it always points at a ready version once the first one is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from contract.knowledge import Dims
from services.errors import Conflict

STAGING = "staging"
READY = "ready"
RETIRING = "retiring"
DAMAGED = "damaged"
STATES = (STAGING, READY, RETIRING, DAMAGED)


@dataclass(frozen=True)
class VersionIdentity:
    """What makes a published version unique: its ``number`` (monotonic, never reused, also after Redis
    lost its data), a random ``publish_id`` drawn by the publish, and the ``checksum`` of its content
    (:meth:`gkc.bundle.Manifest.content_checksum`). Two identities are the same knowledge when their
    checksums are equal; the same version when all three are."""

    number: int
    publish_id: str
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VersionIdentity:
        return cls(
            number=int(data["number"]), publish_id=str(data["publish_id"]), checksum=str(data["checksum"])
        )

    def __str__(self) -> str:
        return f"v{self.number} (publish {self.publish_id}, content {self.checksum[:12]})"


class IdentityMismatch(Conflict):
    """Knowledge whose identity is not the one a consumer pinned (a model trained on other knowledge)."""


@dataclass(frozen=True)
class Pin:
    """A consumer's lease on a version: while it is live (``expires`` in the future) GKC never retires
    the version. ``holder`` names the consumer (e.g. ``ranker@host:model``)."""

    number: int
    holder: str
    publish_id: str
    since: float
    heartbeat: float
    expires: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Staging:
    """A version being written: its identity and the namespace its keys live under."""

    identity: VersionIdentity
    namespace: str
    #: The store's used memory when the version was begun (its size is measured from it).
    used_before: int = 0

    @property
    def number(self) -> int:
        return self.identity.number


@dataclass(frozen=True)
class VersionRecord:
    """One version as the registry holds it. Times are the registry's clock (unix seconds)."""

    identity: VersionIdentity
    state: str
    namespace: str
    dims: Dims
    #: Keys the version holds once ready (user hashes + item strings); 0 while staging.
    keys: int = 0
    #: A few (id, digest) pairs per block, read back by the integrity check at start.
    sample: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    #: Why a version is damaged or retiring (empty otherwise).
    reason: str = ""
    pins: tuple[Pin, ...] = ()
    #: How its vectors are stored (:mod:`contract.quantize`): float32 | float16 | int8.
    dtype: str = "float32"
    #: Its keys are listed in a key log (deletion need not scan); False for versions from before.
    keylog: bool = False
    #: Entries (K̂_u + K̂_i + K̂_uc) and Redis memory it took (``used_memory`` growth while it was
    #: written, measured by the publisher), once ready; 0 = unknown (versions from before).
    entries: int = 0
    size_bytes: int = 0
    #: A delta version's base (:mod:`gkc.delta`): reads fall through to it for entries this one lacks.
    base: VersionIdentity | None = None

    @property
    def version(self) -> int:
        return self.identity.number

    def to_json(self, active: int | None) -> dict[str, Any]:
        return {
            "version": self.version,
            "identity": self.identity.to_json(),
            "state": self.state,
            "active": self.version == active,
            "updated": self.updated,
            "reason": self.reason,
            "keys": self.keys,
            "entries": self.entries,
            "bytes": self.size_bytes,
            "dtype": self.dtype,
            "base": None if self.base is None else self.base.to_json(),
            "pins": [p.to_json() for p in self.pins],
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class RegistryView:
    """What a reader needs of the registry: ready versions, the active pointer and the registry's epoch
    (a random id drawn when the registry is created: it changes when Redis lost its data)."""

    records: tuple[VersionRecord, ...]
    active: int | None
    epoch: str | None


@dataclass(frozen=True)
class RawRead:
    """Stored rows as bytes (the version's dtype layout); ``None`` where a key or field does not exist."""

    user: bytes | None
    ucs: list[bytes | None]
    items: list[bytes | None]


@dataclass(frozen=True)
class MemoryInfo:
    """Memory figures summed over the store's primaries. ``max_bytes`` 0 = no limit configured."""

    used_bytes: int
    max_bytes: int
    #: The store's eviction policy (Redis ``maxmemory-policy``), the strictest-named one if nodes differ.
    policy: str
    evicted_keys: int
    #: Memory of the host the store runs on (0 = unknown); bounds a store without ``max_bytes``.
    system_bytes: int = 0

    @property
    def limit_bytes(self) -> int:
        return self.max_bytes or self.system_bytes

    @property
    def free_bytes(self) -> int | None:
        """Bytes left before the store refuses writes (None = unknown)."""
        return max(0, self.limit_bytes - self.used_bytes) if self.limit_bytes else None


class KnowledgeReader(Protocol):
    """Stored rows of one version. Implementations raise :class:`services.errors.Unavailable` when down."""

    def read(
        self,
        namespace: str,
        user_id: str,
        category_ids: Sequence[str],
        item_ids: Sequence[str],
        fallback: str | None = None,
    ) -> RawRead:
        """The entries of ``namespace``; with ``fallback`` (a delta version's base namespace), each entry
        ``namespace`` lacks is the fallback's, read in the same round trip."""
        ...


class StoreProbe(Protocol):
    """What the health monitor asks of the store."""

    def ping(self) -> None:
        """Return when every primary answers; :class:`services.errors.Unavailable` otherwise."""
        ...

    def memory(self) -> MemoryInfo: ...


class VersionView(Protocol):
    """The part of the registry a serving process reads."""

    def view(self) -> RegistryView:
        """Ready versions and the active pointer (cheap: every reader calls it every second)."""
        ...


class VersionRegistry(VersionView, Protocol):
    """Version states, identities, the active pointer and pins; every change is one atomic update."""

    def records(self) -> tuple[list[VersionRecord], int | None]:
        """All versions, any state, with manifests and pins, and the active version (listings)."""
        ...

    def now(self) -> float:
        """The registry's clock (unix seconds)."""
        ...

    def ensure_epoch(self) -> str:
        """The registry's epoch, drawn now if the registry has none (new, or lost its data)."""
        ...

    def begin(self, manifest: dict[str, Any], checksum: str, dims: Dims, floor: int = 0) -> Staging:
        """Allocate a number above every earlier one (and above ``floor``), a publish id and a
        namespace, in state ``staging``."""
        ...

    def heartbeat(self, number: int) -> None:
        """The publisher is alive; raises Conflict when the version is no longer staging (deleted)."""
        ...

    def finish(
        self,
        number: int,
        max_ready: int,
        keys: int,
        sample: dict[str, Any],
        entries: int = 0,
        size_bytes: int = 0,
    ) -> list[int]:
        """Atomically staging → ready (and active if none is); retire the oldest versions beyond
        ``max_ready`` that are neither active nor pinned. Raises Conflict when that is impossible or
        the version is no longer staging. Returns the retired version numbers."""
        ...

    def activate(self, number: int) -> None: ...

    def retire(self, number: int, reason: str) -> str:
        """ready/staging/damaged → retiring; returns the former state. Conflict for the active or a
        pinned version, NotFound if unknown."""
        ...

    def mark_damaged(self, number: int, reason: str) -> None: ...

    def record_lost(self, identity: VersionIdentity, dims: Dims, reason: str) -> None:
        """List a version that the store lost (it had been ready) as damaged, without data."""
        ...

    def abandon_stale(self, lease_s: float) -> list[int]:
        """Staging versions without a heartbeat for ``lease_s`` → retiring. Returns them."""
        ...

    def forget(self, number: int) -> None:
        """Drop a retiring version's registry entry once its data is gone."""
        ...

    def pin(self, number: int, holder: str, ttl_s: float, publish_id: str = "") -> Pin:
        """Create or renew ``holder``'s lease on a ready version; :class:`IdentityMismatch` when
        ``publish_id`` is given and the version is another publish."""
        ...

    def unpin(self, number: int, holder: str) -> bool: ...

    def expire_pins(self) -> int:
        """Drop leases whose holder stopped renewing them; returns how many."""
        ...


class KnowledgeWriter(Protocol):
    """Bulk writes into a staging namespace, deletion and inspection of namespaces."""

    def write_user_vectors(self, namespace: str, user_ids: np.ndarray, vectors: np.ndarray) -> int:
        """K̂_u rows; returns entries newly written."""
        ...

    def write_uc_vectors(
        self, namespace: str, user_ids: np.ndarray, category_ids: np.ndarray, vectors: np.ndarray
    ) -> int: ...

    def write_items(self, namespace: str, item_ids: np.ndarray, vectors: np.ndarray) -> int: ...

    def has_entries(self, namespace: str, block: str, ids: Sequence[tuple[str, ...]]) -> int:
        """How many of the ids (``(user,)``, ``(user, category)`` or ``(item,)``) exist in ``block``."""
        ...

    def delete_namespace(self, namespace: str, batch: int = 1000, *, scan: bool = False) -> int:
        """Remove a namespace's keys in batches (never one blocking call), enumerated from the version
        itself (its key log); ``scan`` also sweeps the keyspace for the namespace (orphans, versions
        from before key logs). Returns keys removed."""
        ...

    def count_keys(self, namespaces: Sequence[str] | None = None) -> dict[str, int]:
        """Keys per namespace, of ``namespaces`` or of every namespace found (one pass over the
        keyspace)."""
        ...

    def memory(self) -> MemoryInfo: ...

    def wait_replicated(self, timeout_s: float) -> None:
        """Return once every replica has what its primary has; Unavailable after ``timeout_s``."""
        ...


class KnowledgeStore(KnowledgeReader, VersionRegistry, KnowledgeWriter, StoreProbe, Protocol):
    """All of them, as one backend provides them."""

    def close(self) -> None: ...
