"""``keep export --base V --base-bundle DIR``: a delta bundle over GKC version V (:mod:`gkc.delta`).

The extractor's full export is computed as usual (into a scratch bundle next to ``--out``: computing
costs what a full export costs; what a delta saves is what GKC writes and keeps), compared with the base
version's bundle, and only the entries that are new or changed go into ``--out``, whose manifest names
V's identity (number, publish id, checksum) as GKC reports it. The base bundle must be V's content
(its checksum is V's), else the export is refused: a delta computed against other knowledge would
complete the wrong base.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.ids import canonical_ids
from contract.log import read_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from gkc import delta as gkc_delta
from gkc.store import VersionIdentity
from services.errors import Conflict, InvalidArgument

RULES = ("moved", "seen")


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
    export_full: Any, out: Path, spec: DeltaSpec, identity: VersionIdentity | None = None
) -> dict[str, Any]:
    """``export_full(path) -> (path, stats)`` writes the full bundle; the delta goes to ``out``."""
    if spec.rule not in RULES:
        raise InvalidArgument(f"--changed {spec.rule!r} is not one of {', '.join(RULES)}")
    if spec.epsilon < 0 or (spec.rule == "seen" and spec.epsilon):
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
        _, stats = export_full(scratch)
        full = gkc_bundle.load(scratch, verify_checksums=False, mmap=True)
        rule = _rule(spec, full, base)
        masks = gkc_delta.select(full, base, rule)
        delta = gkc_delta.build(full, masks, identity, rule)
        gkc_bundle.save(delta, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written, total = gkc_delta.entries(delta.manifest.counts), gkc_delta.entries(full.manifest.counts)
    return {
        "bundle": str(out),
        "base": identity.to_json(),
        **rule.describe(),
        "dtype": delta.manifest.dtype,
        "delta_counts": vars(delta.manifest.counts),
        "full_counts": vars(full.manifest.counts),
        "entries": written,
        "full_entries": total,
        "share": round(written / max(total, 1), 4),
        **stats.to_json(),
    }


def _rule(spec: DeltaSpec, full: gkc_bundle.Bundle, base: gkc_bundle.Bundle) -> gkc_delta.Rule:
    if spec.rule == "moved":
        return gkc_delta.Rule("moved", spec.epsilon)
    src, base_src = full.manifest.source, base.manifest.source
    init_from = src.get("init_from")
    if not init_from or init_from != base_src.get("extractor"):
        raise Conflict(
            "--changed seen keeps the base's vectors for what the new days did not touch, so the new "
            f"extractor must continue the base's (keep pretrain --init): it continues {init_from!r}, "
            f"the base was exported from {base_src.get('extractor')!r}; use --changed moved"
        )
    after, until = int(base_src["window"]["last_day"]), int(src["window"]["last_day"])
    df = read_log(src["super"])
    days = day_of(df["ts"].to_numpy())
    new = df[(days > after) & (days <= until)]
    return gkc_delta.Rule(
        "seen",
        seen_users=canonical_ids(np.unique(new["user_id"].to_numpy())),
        seen_items=canonical_ids(np.unique(new["item_id"].to_numpy())),
    )
