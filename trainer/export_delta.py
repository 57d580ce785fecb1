"""``keep export --base V --base-bundle DIR``: a delta bundle over GKC version V (:mod:`gkc.delta`).

``moved``: the extractor's full export is computed as usual (into a scratch bundle next to ``--out``:
computing costs what a full export costs; what the delta saves is what GKC writes and keeps), compared
with the base version's bundle, and only the entries that are new or changed go into ``--out``.
``seen``: only the entries of the users and items seen in the new days are computed (an export
restricted to them, :meth:`trainer.export.ExportPlan.restricted`), so the compute, too, follows what
the new days touched; ``seen-pairs`` narrows a seen user's K̂_uc to the (user, category) pairs of the
new days' rows. Either way the manifest names V's identity (number, publish id, checksum) as GKC
reports it. The base bundle must be V's content (its checksum is V's), else the export is refused: a
delta computed against other knowledge would complete the wrong base.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from contract.log import iter_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from gkc import delta as gkc_delta
from gkc.manifest import Counts
from gkc.store import VersionIdentity
from services.errors import Conflict, InvalidArgument
from trainer.export import ExportStats, Only, export
from trainer.export_scan import SCAN_BATCH_ROWS
from trainer.models.checkpoint import SavedRun, load_run

RULES = ("moved", "seen", "seen-pairs")


@dataclass(frozen=True)
class NewExport:
    """The export a delta is made of: the new extractor, read how ``keep export`` reads it."""

    extractor: Path
    super_path: Path | None = None
    batch_size: int = 4096
    progress: bool = True
    dtype: str = "float32"

    def run(self) -> SavedRun:
        return load_run(self.extractor)

    def write(self, out: Path, only: Only | None = None) -> tuple[Path, ExportStats]:
        return export(
            self.extractor,
            out,
            super_path=self.super_path,
            batch_size=self.batch_size,
            progress=self.progress,
            dtype=self.dtype,
            only=only,
        )


@dataclass(frozen=True)
class DeltaSpec:
    base: int
    base_bundle: Path
    #: GKC's REST API (where V's identity is read).
    api_url: str
    rule: str = "moved"
    epsilon: float = 0.0
    token: str | None = None


def base_identity(spec: DeltaSpec) -> VersionIdentity:
    """Version ``spec.base`` as GKC holds it (ready, a full version), its identity."""
    from gkc.client import GkcOpsClient
    from gkc.publishing import check_api_url

    ops = GkcOpsClient(check_api_url(spec.api_url), spec.token)
    try:
        record = ops.version(spec.base)
    finally:
        ops.close()
    if record.get("state") != "ready":
        raise Conflict(f"GKC version {spec.base} is {record.get('state')}, not ready: it cannot be a base")
    if record.get("base"):
        raise Conflict(f"GKC version {spec.base} is itself a delta; deltas are one deep: use a full version")
    return VersionIdentity.from_json(record["identity"])


def export_delta(
    new: NewExport, out: Path, spec: DeltaSpec, identity: VersionIdentity | None = None
) -> dict[str, Any]:
    """The delta of ``new``'s export over ``spec``'s base, written to ``out``; its summary."""
    if spec.rule not in RULES:
        raise InvalidArgument(f"--changed {spec.rule!r} is not one of {', '.join(RULES)}")
    if spec.epsilon < 0 or (spec.rule != "moved" and spec.epsilon):
        raise InvalidArgument("--epsilon is a relative L2 distance >= 0, for --changed moved only")
    if out.exists():
        raise InvalidArgument(f"{out} already exists; refusing to overwrite a bundle")
    base = gkc_bundle.load(spec.base_bundle, mmap=True)
    identity = identity or base_identity(spec)
    if base.manifest.content_checksum() != identity.checksum:
        raise Conflict(
            f"{spec.base_bundle} is not the content of GKC version {identity} (checksum "
            f"{base.manifest.content_checksum()[:12]}): a delta against it would complete other knowledge"
        )
    scratch = out.with_name(f".{out.name}.full")
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        if spec.rule != "moved":
            run = new.run()
            rule = seen_rule(run, new.super_path, base.manifest.source, pairs=spec.rule == "seen-pairs")
            assert rule.seen_users is not None and rule.seen_items is not None
            _, stats = new.write(scratch, Only(rule.seen_users, rule.seen_items, rule.seen_pairs))
            part = gkc_bundle.load(scratch, verify_checksums=False, mmap=True)
            users, items = canonical_ids(run.vocabs.user.keys), canonical_ids(run.vocabs.item.keys)
            masks = gkc_delta.select_seen(part, base, rule, users, items)
            full_counts = Counts(**part.manifest.source["subset"]["of_counts"])
            gkc_delta.write(part, masks, identity, rule, out, full_counts)
        else:
            _, stats = new.write(scratch)
            full = gkc_bundle.load(scratch, verify_checksums=False, mmap=True)
            rule = gkc_delta.Rule("moved", spec.epsilon)
            gkc_delta.write(full, gkc_delta.select(full, base, rule), identity, rule, out)
            full_counts = full.manifest.counts
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    delta = gkc_bundle.read_manifest(out)
    written, total = gkc_delta.entries(delta.counts), gkc_delta.entries(full_counts)
    return {
        "bundle": str(out),
        "base": identity.to_json(),
        **rule.describe(),
        "dtype": delta.dtype,
        "delta_counts": vars(delta.counts),
        "full_counts": vars(full_counts),
        "entries": written,
        "full_entries": total,
        "share": round(written / max(total, 1), 4),
        **stats.to_json(),
    }


def seen_rule(
    run: SavedRun, super_path: Path | None, base_src: dict[str, Any], pairs: bool = False
) -> gkc_delta.Rule:
    """The users and items (and with ``pairs`` the (user, category) pairs) of the log days after the
    window of the base (``base_src``: its manifest's source) up to ``run``'s end (the log streams past
    in batches: only the ids are kept)."""
    init_from = run.config.data.init_from
    if not init_from or init_from != base_src.get("extractor"):
        raise Conflict(
            "--changed seen keeps the base's vectors for what the new days did not touch, so the new "
            f"extractor must continue the base's (keep pretrain --init): it continues {init_from!r}, "
            f"the base was exported from {base_src.get('extractor')!r}; use --changed moved"
        )
    after, until = int(base_src["window"]["last_day"]), run.window[1]
    seen: dict[str, list[np.ndarray]] = {"users": [], "items": [], "pairs": []}
    source = super_path or run.config.data.super
    columns = ("user_id", "item_id", "category_id", "ts") if pairs else ("user_id", "item_id", "ts")
    for _, df in iter_log(source, columns, SCAN_BATCH_ROWS):
        days = day_of(df["ts"].to_numpy())
        new = df[(days > after) & (days <= until)]
        seen["users"].append(canonical_ids(np.unique(new["user_id"].to_numpy())))
        seen["items"].append(canonical_ids(np.unique(new["item_id"].to_numpy())))
        if pairs:
            user, category = (canonical_ids(new[c].to_numpy()) for c in ("user_id", "category_id"))
            seen["pairs"].append(np.unique(gkc_delta.pair_keys(user, category)))

    def union(parts: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate(parts)) if parts else np.array([], dtype=str)

    return gkc_delta.Rule(
        "seen-pairs" if pairs else "seen",
        seen_users=union(seen["users"]),
        seen_items=union(seen["items"]),
        seen_pairs=union(seen["pairs"]) if pairs else None,
    )
