"""A sharded publish (``keep export --gkc-redis`` under torchrun): :mod:`gkc.publish`'s protocol split over
ranks. One rank allocates the staging version with the full manifest (:func:`begin_sharded`), every rank
writes and checks its own slice (:func:`write_shard`), and one rank verifies the whole and makes it ready
in one atomic update (:func:`finalise_shards`), or removes it.

The slices are split by user: all of a user's entries (K̂_u and every K̂_uc: one hash key) are in one
rank's slice, and each item in one slice. So no rank needs the whole version's ids: the version's key
count is the sum of the slices', and the presence check reads a sample each rank drew from its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from contract.knowledge import Dims
from gkc.bundle import Bundle, Counts, Manifest
from gkc.delta import check_base
from gkc.publish import (
    PublishResult,
    PublishStore,
    PublishVerificationError,
    abort,
    check_counts,
    check_room,
    entry_count,
    key_count,
    measured_size,
    sample_digests,
    verify_sample,
    write_data,
)
from gkc.store import Staging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardReport:
    """What one rank of a sharded publish did: entries written per block, digests, or its error."""

    rank: int
    written: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    #: Keys its slice holds (one hash per user, one string per item).
    keys: int = 0
    #: A few of its ids per block (zero-width vectors): the finaliser's presence check reads them back.
    sample: Bundle | None = None


def array_digests(bundle: Bundle) -> dict[str, str]:
    """SHA-256 of each array's raw bytes (not of its ``.npy`` file), keyed by array name.

    A sharded publish has no files; these name exactly the rows and vectors each rank wrote."""
    out = {}
    for name, arr in bundle.arrays().items():
        data = np.ascontiguousarray(arr)
        digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
        for start in range(0, len(data), 65_536):  # bounded copies for big blocks
            digest.update(data[start : start + 65_536].tobytes())
        out[name.removesuffix(".npy")] = digest.hexdigest()
    return out


def shard_checksums(digests: Sequence[dict[str, str]]) -> dict[str, str]:
    """The manifest's ``checksums`` of a sharded version: ``shard<r>/<array>`` -> SHA-256 of its bytes."""
    return {f"shard{r}/{name}": d for r, ds in enumerate(digests) for name, d in sorted(ds.items())}


def begin_sharded(store: PublishStore, manifest: Manifest, max_ready: int) -> Staging:
    """The finalising rank opens the staging version every rank writes into."""
    check_room(store, manifest, max_ready)
    check_base(manifest, store.records()[0])
    used_before = store.memory().used_bytes
    staging = store.begin(manifest.to_json(), manifest.content_checksum(), manifest.dims)
    return replace(staging, used_before=used_before)


def write_shard(
    store: PublishStore,
    staging: Staging,
    shard: Bundle,
    *,
    rank: int,
    batch: int = 2000,
    samples: int = 64,
    progress: bool = False,
    writers: int = 2,
) -> ShardReport:
    """One rank's slice of a sharded publish: write, check counts, read a sample back bit-exact.

    Never raises: the report carries the error, so the finalising rank hears from every live rank."""
    try:
        written = write_data(store, staging, shard, batch=batch, progress=progress, writers=writers)
        check_counts(staging.number, written, shard.manifest.counts)
        verify_sample(store, staging.namespace, staging.number, shard, samples)
        return ShardReport(
            rank=rank,
            written=written,
            digests=array_digests(shard),
            keys=key_count(shard),
            sample=id_sample(shard, samples, seed=rank),
        )
    except Exception as err:
        log.warning("rank %d: writing its shard of %s failed: %s", rank, staging.identity, err)
        return ShardReport(rank=rank, error=f"{type(err).__name__}: {err}")


def ids_only(
    user_ids: np.ndarray, item_ids: np.ndarray, uc_user_ids: np.ndarray, uc_category_ids: np.ndarray
) -> Bundle:
    """A bundle of these ids with zero-width vectors (presence checks look at ids alone)."""
    return Bundle(
        manifest=Manifest(dims=Dims(0, 0, 0), counts=Counts(len(user_ids), len(item_ids), len(uc_user_ids))),
        user_ids=user_ids,
        user_vectors=np.empty((len(user_ids), 0), np.float32),
        item_ids=item_ids,
        item_vectors=np.empty((len(item_ids), 0), np.float32),
        uc_user_ids=uc_user_ids,
        uc_category_ids=uc_category_ids,
        uc_vectors=np.empty((len(uc_user_ids), 0), np.float32),
    )


def id_sample(bundle: Bundle, n: int, seed: int) -> Bundle:
    """Up to ``n`` ids per block of ``bundle``, drawn at random."""
    rng = np.random.default_rng(seed)

    def pick(length: int) -> np.ndarray:
        return np.sort(rng.choice(length, min(n, length), replace=False))

    users, items, ucs = pick(len(bundle.user_ids)), pick(len(bundle.item_ids)), pick(len(bundle.uc_user_ids))
    return ids_only(
        bundle.user_ids[users], bundle.item_ids[items], bundle.uc_user_ids[ucs], bundle.uc_category_ids[ucs]
    )


def _joined(samples: Sequence[Bundle]) -> Bundle:
    names = ("user_ids", "item_ids", "uc_user_ids", "uc_category_ids")
    return ids_only(*(np.concatenate([getattr(s, name) for s in samples]) for name in names))


def finalise_shards(
    store: PublishStore,
    staging: Staging,
    manifest: Manifest,
    reports: Sequence[ShardReport],
    *,
    max_ready: int = 5,
    replica_timeout_s: float = 10.0,
) -> PublishResult:
    """Verify a sharded version and make it ready in one atomic update; remove it on any failure."""
    try:
        failed = [f"rank {r.rank}: {r.error}" for r in reports if r.error is not None]
        if failed:
            raise PublishVerificationError(f"version {staging.number}: " + "; ".join(failed))
        if shard_checksums([r.digests for r in reports]) != manifest.checksums:
            raise PublishVerificationError(
                f"version {staging.number}: the shards written are not the manifest's"
            )
        written = {k: sum(r.written[k] for r in reports) for k in ("users", "ucs", "items")}
        check_counts(staging.number, written, manifest.counts)
        ids = _joined([r.sample for r in reports if r.sample is not None])
        sample_digests(store, staging.namespace, ids, 64)  # a wider presence check than the record's
        sample = sample_digests(store, staging.namespace, ids)
        store.wait_replicated(replica_timeout_s)
        size = measured_size(store, staging.used_before)
        keys = sum(r.keys for r in reports)
        retired = store.finish(staging.number, max_ready, keys, sample, entry_count(manifest.counts), size)
    except BaseException as err:
        abort(store, staging, f"{type(err).__name__}: {err}")
        raise
    log.info("sharded %s ready (%d shards); retired %s", staging.identity, len(reports), retired)
    return PublishResult(staging.number, retired, sum(written.values()), staging.identity)
