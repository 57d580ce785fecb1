"""The knowledge layout a downstream model depends on: blocks, their dims, the pinned version.

GKC knowledge (the serving forms of the paper, §5.2) is, per candidate, the row::

    [K̂_u, K̂_i, K̂_u ⊙ K̂_i, K̂_uc]      (K̂_u ⊙ K̂_i only when the bundle has the interaction block)

named by :data:`GKC_BLOCKS` (``ku_hat`` ... ``kuc_hat``; the hat tells them from the full extractor's
offline blocks ``ku``, ``ki``, ``kui:<task>``, the paper's K_u, K_i, K_ui). A model records its
:class:`KnowledgeSchema` (kind, block names and dims, bundle format) and the pinned version in a
:class:`KnowledgeSpec`; :meth:`KnowledgeSchema.require` refuses knowledge that differs.
Numpy-free and torch-free: ``gkc`` imports :class:`Dims` from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.errors import Conflict

#: The knowledge kind read from GKC or a bundle; other kinds (offline extractor functions) exist in training.
GKC_KIND = "gkc"
#: Bundle format whose layout :meth:`KnowledgeSchema.gkc` describes.
GKC_FORMAT_VERSION = 1

USER_BLOCK = "ku_hat"
ITEM_BLOCK = "ki_hat"
INTERACTION_BLOCK = "ku_hat*ki_hat"
USER_CATEGORY_BLOCK = "kuc_hat"
GKC_BLOCKS = (USER_BLOCK, ITEM_BLOCK, INTERACTION_BLOCK, USER_CATEGORY_BLOCK)
#: Names artifacts of format 1 used for the GKC blocks.
_LEGACY_GKC_NAMES = {
    "ku": USER_BLOCK,
    "ki": ITEM_BLOCK,
    "ku*ki": INTERACTION_BLOCK,
    "kuc": USER_CATEGORY_BLOCK,
}


class KnowledgeMismatch(Conflict):
    """The knowledge offered does not have the schema or version the model was trained with."""


@dataclass(frozen=True)
class Dims:
    """Widths of the three stored knowledge blocks: K̂_u, K̂_i and K̂_uc."""

    user: int
    item: int
    uc: int


@dataclass(frozen=True)
class KnowledgeSchema:
    kind: str
    #: (block name, dim) in column order.
    blocks: tuple[tuple[str, int], ...]
    format_version: int = GKC_FORMAT_VERSION

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.blocks)

    @classmethod
    def gkc(cls, dims: Dims, interaction: bool, format_version: int = GKC_FORMAT_VERSION) -> KnowledgeSchema:
        """The layout of GKC knowledge with these block dims (the interaction block needs user == item)."""
        blocks: list[tuple[str, int]] = [(USER_BLOCK, dims.user), (ITEM_BLOCK, dims.item)]
        if interaction:
            blocks.append((INTERACTION_BLOCK, dims.item))
        blocks.append((USER_CATEGORY_BLOCK, dims.uc))
        return cls(kind=GKC_KIND, blocks=tuple(blocks), format_version=format_version)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "blocks": [[n, d] for n, d in self.blocks],
            "format_version": self.format_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnowledgeSchema:
        kind = str(data["kind"])
        rename = _LEGACY_GKC_NAMES if kind == GKC_KIND else {}
        return cls(
            kind=kind,
            blocks=tuple((rename.get(str(n), str(n)), int(d)) for n, d in data["blocks"]),
            format_version=int(data.get("format_version", GKC_FORMAT_VERSION)),
        )

    def require(self, offered: KnowledgeSchema, *, what: str = "knowledge") -> None:
        """Raise :class:`KnowledgeMismatch` unless ``offered`` is exactly this schema."""
        if offered != self:
            raise KnowledgeMismatch(
                f"{what} schema mismatch: the model was trained with {self.describe()}, "
                f"offered {offered.describe()}"
            )

    def describe(self) -> str:
        blocks = ", ".join(f"{n}:{d}" for n, d in self.blocks)
        return f"{self.kind}[{blocks}] (format {self.format_version})"


@dataclass(frozen=True)
class KnowledgeSpec:
    """One plug-in's knowledge: its schema and, for GKC knowledge, the identity it was trained with.

    The identity is what GKC's ``VersionIdentity`` holds: the version ``number`` (0: none, i.e. read
    the active version; a model trained from a bundle that was never published), the ``publish_id``
    of that publish ("" when trained from a bundle) and the content ``checksum``
    (``Manifest.content_checksum``, the same for a bundle and for GKC's publish of it; "" in artifacts
    written before identities existed, which therefore pin only the number)."""

    schema: KnowledgeSchema
    version: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    publish_id: str = ""
    checksum: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_json(),
            "version": self.version,
            "source": self.source,
            "publish_id": self.publish_id,
            "checksum": self.checksum,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnowledgeSpec:
        return cls(
            schema=KnowledgeSchema.from_json(data["schema"]),
            version=int(data.get("version", 0)),
            source=dict(data.get("source", {})),
            publish_id=str(data.get("publish_id", "")),
            checksum=str(data.get("checksum", "")),
        )

    def describe_identity(self) -> str:
        number = f"v{self.version}" if self.version else "a bundle"
        publish = f" publish {self.publish_id}" if self.publish_id else ""
        return f"{number}{publish} content {self.checksum[:12] or '?'}"

    def identity_problem(self, number: int, publish_id: str, checksum: str) -> str:
        """Why knowledge answered as (``number``, ``publish_id``, ``checksum``) is not the knowledge
        this spec pins ("" when it is). Unknown parts ("" / 0) of the offer are not compared, except a
        missing checksum when one is pinned: knowledge that cannot say what it is is refused."""
        if self.version and number and number != self.version:
            return f"the model is pinned to version {self.version}, offered version {number}"
        if self.checksum and checksum != self.checksum:
            offered = checksum[:12] if checksum else "no checksum"
            return (
                f"the model was trained with knowledge content {self.checksum[:12]} "
                f"({self.describe_identity()}), offered content {offered}"
                f"{f' (version {number})' if number else ''}"
            )
        if self.publish_id and publish_id and publish_id != self.publish_id:
            return (
                f"the model was trained with publish {self.publish_id} of version {self.version}, "
                f"offered publish {publish_id}"
            )
        return ""
