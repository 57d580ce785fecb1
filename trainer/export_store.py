"""``keep export --gkc-redis``: the bundle's entries written straight into GKC's store, sharded.

Under torchrun every rank prepares the same :class:`trainer.export.ExportPlan` (vocabularies, history
index, id lists), computes its contiguous span of each block cut at ``batch_size`` boundaries (so every
rank runs exactly the batches one process would, and the vectors are bit-identical), and writes it into
one staging version through ``gkc.publish_sharded``'s protocol (see there); rank 0 allocates the
version and finalises it. A failure on any rank is told to the others, so none waits forever and no
partial version becomes visible.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from gkc import bundle as gkc_bundle
from gkc import publish as gkc_publish
from gkc import publish_sharded as gkc_sharded
from gkc.publish import PublishStore
from gkc.store import Staging
from services.errors import Conflict, InvalidArgument, KeepError, NotFound
from trainer.distributed import DataParallel
from trainer.export import ExportStats, prepare
from trainer.export_scan import LogDigest
from trainer.export_store_delta import StoreDelta, whole_counts
from trainer.models.checkpoint import LoadedExtractor


class ShardedExportError(KeepError):
    """A rank of a sharded export failed (the message names it); nothing became visible."""


#: What a rank refuses (a delta's base checks): raised on every rank as it is, not as a failure.
REFUSALS = (Conflict, InvalidArgument, NotFound)


def export_to_store(
    ext: LoadedExtractor,
    log: pd.DataFrame | LogDigest,
    store: PublishStore,
    *,
    source: Path,
    group: DataParallel | None = None,
    batch_size: int = 4096,
    publish_batch: int = 2000,
    max_ready: int = 5,
    samples: int = 64,
    progress: bool = True,
    dtype: str = "float32",
    delta: StoreDelta | None = None,
) -> tuple[gkc_publish.PublishResult, ExportStats]:
    """Compute this rank's span of every block and publish them together as one new version (with
    ``delta``: only the rule's entries, as a delta over its base; :mod:`trainer.export_store_delta`).

    Every rank calls this with the same arguments; all return the same result or raise."""
    group = group or DataParallel()
    plan = prepare(ext, log, source=source)
    shard: gkc_bundle.Bundle | None = None
    try:
        whole = plan.counts()  # this rank's part of the whole export (a delta's share is of it)
        if delta is not None:
            plan = delta.restrict(plan, group)
        n_users = plan.blocks["users"].n
        # This rank's users: all the plan has when ext holds only this rank's part of the user table
        # (the CLI's way), else its span of them; the slices must split the users (gkc.publish_sharded).
        users = (0, n_users) if ext.user_positions is not None else group.span(n_users, batch_size)
        items = group.span(plan.blocks["items"].n, batch_size)
        spans = {**plan.user_span(*users, batch_size), "items": items}
        shard = plan.bundle(spans, batch_size, progress and group.is_writer, dtype)
        mine: tuple[dict[str, str], gkc_bundle.Counts, dict[str, int]] | KeepError | str = (
            gkc_sharded.array_digests(shard),
            shard.manifest.counts,
            vars(whole),
        )
    except REFUSALS as err:  # every rank raises the first one, as it is
        mine = err
    except Exception as err:  # tell the others instead of leaving them waiting
        mine = f"rank {group.rank}: {type(err).__name__}: {err}"
    gathered = group.gather_objects(mine)
    refused = [d for d in gathered if isinstance(d, KeepError)]
    if refused:
        raise refused[0]
    failed = [d for d in gathered if isinstance(d, str)]
    if failed:
        raise ShardedExportError("; ".join(failed))
    digests = [d for d in gathered if not isinstance(d, (str, KeepError))]
    assert shard is not None
    model_dims = shard.manifest.dims
    counts = [c for _, c, _ in digests]  # what each rank computed, the whole version's together
    total = gkc_bundle.Counts(
        *(sum(getattr(c, f) for c in counts) for f in ("users", "items", "user_categories"))
    )
    manifest = gkc_bundle.Manifest(
        dims=model_dims,
        counts=total,
        dtype=dtype,
        interaction=model_dims.user == model_dims.item,
        source={**plan.source, "sharded": {"ranks": group.world, "batch_size": batch_size}},
        metrics=plan.metrics,
        checksums=gkc_sharded.shard_checksums([d for d, _, _ in digests]),
        created=time.time(),
    )
    summary: dict[str, Any] = {}
    staging: Staging | KeepError | str = ""
    if group.is_writer:
        try:
            if delta is not None:
                full = whole_counts([of for _, _, of in digests])
                manifest = delta.manifest(manifest, full)
                summary = delta.summary(total, full)
            staging = gkc_sharded.begin_sharded(store, manifest, max_ready)
        except REFUSALS as err:  # (the base changed meanwhile): as it is, on every rank
            staging = err
        except Exception as err:
            staging = f"rank 0 could not begin a version: {type(err).__name__}: {err}"
    staging = group.broadcast_object(staging)
    if isinstance(staging, KeepError):
        raise staging
    if isinstance(staging, str):
        raise ShardedExportError(staging)
    report = gkc_sharded.write_shard(
        store,
        staging,
        shard,
        rank=group.rank,
        batch=publish_batch,
        samples=samples,
        progress=progress and group.is_writer,
    )
    try:
        reports = group.gather_objects(report)
    except BaseException:  # a peer died mid-way (gloo noticed): never promote, mark it for cleanup
        if group.is_writer:
            gkc_publish.abort(store, staging, "a rank died mid-way")
        raise
    outcome: gkc_publish.PublishResult | str = ""
    if group.is_writer:
        try:
            outcome = gkc_sharded.finalise_shards(store, staging, manifest, reports, max_ready=max_ready)
        except Exception as err:
            outcome = f"version {staging.number} not published: {type(err).__name__}: {err}"
    outcome = group.broadcast_object(outcome)
    if isinstance(outcome, str):
        raise ShardedExportError(outcome)
    return outcome, replace(
        plan.stats, users=total.users, items=total.items, user_categories=total.user_categories, delta=summary
    )
