"""Offline pins: ``keep train`` and ``keep evaluate`` read exactly one concrete knowledge identity.

An artifact pins what it was trained with (``KnowledgeSpec``: version number, publish id, content
checksum). :func:`resolve_pin` resolves it once, at the start of training: version 0 ("the active one")
becomes the number GKC answers with, and that number with its identity is what every later lookup must
carry (an activation during training changes nothing). From a bundle the identity is the bundle's
content checksum (no publish id: it was not published); ``--knowledge-version N`` with a bundle only
names the number the bundle is published as, so GKC's version N with other content is refused later.

:func:`evaluation_knowledge` is the other side: the knowledge offered to a trained model must be the
identity it pins, from GKC and from a bundle alike, else :class:`contract.knowledge.KnowledgeMismatch`
(``keep: error: ...``, exit 2). Artifacts written before identities existed pin only the number.

:func:`knowledge_lease`: while a command reads through GKC it holds a lease (docs/gkc.md, "Pins") on
each version it reads, renewed over GKC's REST API and dropped at the end (or ending ``ttl_s`` after the
process dies), so GKC never retires the version under a running training or evaluation.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from contract.artifact import Artifact
from contract.ids import canonical_ids
from contract.knowledge import Dims, KnowledgeMismatch, KnowledgeSchema
from ranker.knowledge import KnowledgeReader, manifest_schema
from services.errors import InvalidArgument
from trainer.train import GkcKnowledge


def resolve_pin(reader: KnowledgeReader, version: int, df: pd.DataFrame, progress: bool) -> GkcKnowledge:
    """Probe ``reader`` once for ``version`` (0: the active one) and pin what answers: its number,
    publish id, content checksum and block dims."""
    if len(df) == 0:
        raise InvalidArgument("no rows to read knowledge for")
    first = df.iloc[:1]
    lookup = reader.batch_get(
        str(canonical_ids(first["user_id"].to_numpy())[0]),
        canonical_ids(first["item_id"].to_numpy()).tolist(),
        canonical_ids(first["category_id"].to_numpy()).tolist(),
        version,
    )
    if not lookup.checksum:
        raise KnowledgeMismatch(
            f"knowledge version {lookup.version or version} carries no content checksum: "
            "the GKC is older than the model's pins need; upgrade it"
        )
    manifest = getattr(reader, "manifest", None)
    if manifest is not None:
        schema = manifest_schema(manifest)
    else:
        du, di, dc = lookup.user.shape[-1], lookup.items.shape[-1], lookup.ucs.shape[-1]
        schema = KnowledgeSchema.gkc(Dims(user=du, item=di, uc=dc), interaction=du == di)
    return GkcKnowledge(
        reader=reader,
        version=lookup.version or version,
        schema=schema,
        progress=progress,
        publish_id=lookup.publish_id,
        checksum=lookup.checksum,
    )


def evaluation_knowledge(artifact: Artifact, reader: KnowledgeReader, progress: bool) -> list[GkcKnowledge]:
    """One provider per plug-in of ``artifact``, reading its pinned identity; refuses a reader that
    offers other knowledge (a bundle whose content differs is refused before any lookup)."""
    manifest = getattr(reader, "manifest", None)
    offered_checksum = getattr(reader, "checksum", None)
    providers = []
    for name, spec in artifact.knowledge.items():
        if manifest is not None:
            artifact.require_knowledge(name, manifest_schema(manifest))
        if offered_checksum is not None:  # a local bundle: its content is known before any lookup
            problem = spec.identity_problem(spec.version, "", str(offered_checksum))
            if problem:
                raise KnowledgeMismatch(f"knowledge {name!r}: {problem}")
        providers.append(
            GkcKnowledge(
                reader,
                spec.version,
                spec.schema,
                name=name,
                progress=progress,
                publish_id=spec.publish_id,
                checksum=spec.checksum,
            )
        )
    return providers


def lease_holder(command: str) -> str:
    """``keep-<command>@<host>:<pid>``: who holds the lease (shown by ``GET /v1/versions``)."""
    return f"keep-{command}@{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def knowledge_lease(
    api_url: str | None,
    token: str | None,
    providers: Sequence[Any],
    holder: str,
    *,
    ttl_s: float = 60.0,
) -> Iterator[list[Any]]:
    """Hold one GKC lease per version the ``providers`` read through GKC (bundle readers and version 0
    need none) for the duration of the block; yields the leases. Without ``api_url``: none. A lease GKC
    refuses (version gone, another publish of that number, bad token) raises before anything is read."""
    from gkc.bundle_reader import BundleReader

    wanted = {
        (p.version, p.publish_id)
        for p in providers
        if isinstance(p, GkcKnowledge) and p.version > 0 and not isinstance(p.reader, BundleReader)
    }
    if not api_url or not wanted:
        yield []
        return
    from gkc.client import GkcOpsClient
    from gkc.leases import Lease

    ops = GkcOpsClient(api_url, token or "", timeout_s=10.0)
    leases: list[Lease] = []
    try:
        for version, publish_id in sorted(wanted):
            leases.append(Lease(ops, version, holder, ttl_s=ttl_s, publish_id=publish_id or None).start())
        yield leases
    finally:
        for lease in leases:
            lease.close()
        ops.close()
