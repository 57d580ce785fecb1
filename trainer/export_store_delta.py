"""``keep export --base V --gkc-redis URL [--changed seen|seen-pairs]``: a delta written straight into
GKC's store by every torchrun rank (:mod:`trainer.export_store`), with no bundle of the base anywhere.

What the base is and holds is read from GKC's store: its record (identity, state, manifest) and, for
the refusals of :func:`gkc.delta.select_seen`, its own keys (:mod:`gkc.delta_base`). The ranks split
the *seen* users (not all users) at batch boundaries (:func:`user_range`), so each computes the K̂_u and
K̂_i batches a single process computes for the same delta, and loads only its range of the user table.
One process writes the bytes ``keep export --base --out`` + ``keep publish`` write; 2 ranks the same
K̂_u and K̂_i bytes, and K̂_uc to float rounding (the pairs' batch at a rank boundary is split; tested).

``moved`` compares every entry with the base's stored row: it needs the base's bundle (``--out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from gkc import delta as gkc_delta
from gkc import delta_base
from gkc.manifest import Counts, Manifest
from gkc.store import VersionRecord, VersionRegistry
from services.errors import InvalidArgument, KeepError
from trainer.distributed import DataParallel
from trainer.export import ExportPlan, Only
from trainer.export_delta import seen_rule
from trainer.models.checkpoint import load_run

RULES = ("seen", "seen-pairs")


@dataclass(frozen=True)
class StoreDelta:
    """One rank's part of a sharded delta."""

    base: VersionRecord
    rule: gkc_delta.Rule
    #: ``[lo, hi)`` of the user vocabulary this rank loads (:func:`user_range`).
    positions: tuple[int, int]
    #: Every user and item id the new extractor exports (canonical): a base id outside is refused.
    users: np.ndarray
    items: np.ndarray
    keys: delta_base.BaseKeys

    def restrict(self, plan: ExportPlan, group: DataParallel) -> ExportPlan:
        """The rank's plan narrowed to the rule's entries, after the base's refusal checks (409)."""
        rule = self.rule
        assert rule.seen_users is not None and rule.seen_items is not None
        part = plan.restricted(Only(rule.seen_users, rule.seen_items, rule.seen_pairs))
        delta_base.check_base_ids(self.keys, self.base, self.users, self.items, group.rank, group.world)
        pairs = gkc_delta.pair_keys(part.uc_user_ids, part.uc_category_ids)
        delta_base.check_base_pairs(self.keys, self.base, part.user_ids, pairs, rule.seen_pairs)
        return part

    def manifest(self, manifest: Manifest, full: Counts) -> Manifest:
        """The version's manifest made a delta's: it names the base, records the rule and the counts of
        the whole export; refused (409) when it would not read like its base."""
        source = {**manifest.source, "subset": {"of_counts": vars(full)}}
        source["delta"] = gkc_delta.source_of(self.rule, full, self.base.identity)
        made = Manifest(**{**vars(manifest), "source": source, "base": self.base.identity})
        gkc_delta.check_compatible(made, Manifest.from_json(self.base.manifest))
        return made

    def summary(self, counts: Counts, full: Counts) -> dict[str, Any]:
        written, total = gkc_delta.entries(counts), gkc_delta.entries(full)
        return {
            "base": self.base.identity.to_json(),
            **self.rule.describe(),
            "delta_counts": vars(counts),
            "full_counts": vars(full),
            "full_entries": total,
            "share": round(written / max(total, 1), 4),
        }


def whole_counts(parts: list[dict[str, int]]) -> Counts:
    """The whole export's counts from each rank's: users and pairs split over the ranks; every rank's
    plan holds all the items."""
    return Counts(sum(p["users"] for p in parts), parts[0]["items"], sum(p["user_categories"] for p in parts))


def user_range(seen: np.ndarray, n: int, group: DataParallel, batch_size: int) -> tuple[int, int]:
    """This rank's ``[lo, hi)`` of the ``n`` user positions: the ranks split the *seen* positions
    (ascending) at batch boundaries, and each takes the users from its first seen one up to the next
    rank's first (rank 0 from 0, the last rank to ``n``). So the ranges split all users (their counts
    add up to the whole export's) and each rank computes the batches one process would."""
    lo, hi = group.span(len(seen), batch_size)

    def start(k: int) -> int:
        return int(seen[k]) if k < len(seen) else n

    return (0 if group.rank == 0 else start(lo), n if group.rank == group.world - 1 else start(hi))


def store_delta(
    extractor: Path,
    registry: VersionRegistry,
    keys: delta_base.BaseKeys,
    *,
    base: int,
    rule: str,
    super_path: Path | None,
    group: DataParallel,
    batch_size: int,
) -> StoreDelta:
    """Every rank: the base as rank 0 read it, the rule's ids (the log's new days), this rank's users."""
    if rule not in RULES:
        raise InvalidArgument(
            f"--base with --gkc-redis takes --changed {' or '.join(RULES)}, not {rule!r}: `moved` compares "
            "every entry with the base's bundle; export it with --out and --base-bundle, then keep publish"
        )
    record: VersionRecord | KeepError | None = None
    if group.is_writer:
        try:
            record = delta_base.base_record(registry.records()[0], base)
        except KeepError as err:  # every rank raises it (the CLI prints one line)
            record = err
    record = group.broadcast_object(record)
    if isinstance(record, KeepError):
        raise record
    assert record is not None
    run = load_run(extractor)
    seen = seen_rule(run, super_path, record.manifest.get("source", {}), pairs=rule == "seen-pairs")
    users = canonical_ids(run.vocabs.user.keys)
    assert seen.seen_users is not None
    span = user_range(np.flatnonzero(np.isin(users, seen.seen_users)), len(users), group, batch_size)
    return StoreDelta(record, seen, span, users, canonical_ids(run.vocabs.item.keys), keys)
