"""Delta versions: a bundle that holds only the entries that are new or changed against a published
*base* version, and reads through to the base for everything else (docs/gkc.md, "Delta versions").

An entry is a K̂_u (by user id), a K̂_i (by item id) or a K̂_uc (by (user id, category id)). Against the
base's entry of the same key, an entry of the new export is in the delta when (:class:`Rule`):

- it is **new**: the base has no entry for its key (always); or
- ``moved`` (the default, ``epsilon = 0``): its *stored* row differs from the base's stored row in any
  bit (both at the same dtype), so the union of delta and base reads back equal to the new export bit
  for bit; with ``epsilon > 0``: ``‖new − old‖₂ > ε · ‖old‖₂`` on the dequantized rows, so every entry
  read through to the base is within a relative L2 distance ε of the new export's; or
- ``seen``: its user or item occurs in the log days after the base's window (``seen_users`` /
  ``seen_items``; a seen user's K̂_u and all of their K̂_uc). Entries of users and items not seen keep
  the base's vectors even where the continued extractor would now give others: the union is *not* the
  new export, but every entry in it was exported by the base's extractor or its continuation; or
- ``seen-pairs``: as ``seen`` for K̂_u and K̂_i, but a K̂_uc only where its (user, category) pair occurs
  in those days (``seen_pairs``): a seen user's other categories keep the base's K̂_uc too. K̂_uc is
  most of a version; a day touches a few of a user's categories.

A delta can never remove an entry: when the base holds a key the new export lacks, the delta is
refused (a full version is the answer). Base and delta must agree on dims, dtype, layout and format;
the base must be a full version (chains are one delta deep). Numpy only (no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract import quantize as quant
from gkc.bundle import BLOCK_FIELDS, Bundle, validate
from gkc.bundle_writer import BundleWriter
from gkc.manifest import BundleError, Counts, Manifest
from gkc.store import READY, IdentityMismatch, VersionIdentity, VersionRecord
from services.errors import Conflict

BLOCKS = ("users", "items", "ucs")
CHUNK = 65_536


@dataclass(frozen=True)
class Rule:
    """What makes an entry *changed* (module docstring)."""

    kind: str = "moved"  # "moved" | "seen" | "seen-pairs"
    epsilon: float = 0.0
    seen_users: np.ndarray | None = None
    seen_items: np.ndarray | None = None
    #: ``seen-pairs``: the (user, category) keys (:func:`pair_keys`) of the new days' rows.
    seen_pairs: np.ndarray | None = None

    def describe(self) -> dict[str, Any]:
        if self.kind != "moved":
            return {"rule": self.kind}
        return {"rule": "moved", "epsilon": self.epsilon}


def pair_keys(users: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """A K̂_uc's key: ``user \x1f category`` (canonical ids)."""
    return np.char.add(np.char.add(users, "\x1f"), categories)


def keys(bundle: Bundle, block: str) -> np.ndarray:
    """The keys of a block's rows (a K̂_uc's key is ``user \\x1f category``)."""
    if block == "users":
        return bundle.user_ids
    if block == "items":
        return bundle.item_ids
    return pair_keys(bundle.uc_user_ids, bundle.uc_category_ids)


def align(new_keys: np.ndarray, base_keys: np.ndarray) -> np.ndarray:
    """For each new key the base's row holding it, -1 where the base has none (keys unique)."""
    if not len(base_keys) or not len(new_keys):
        return np.full(len(new_keys), -1, dtype=np.int64)
    order = np.argsort(base_keys, kind="stable")
    ordered = base_keys[order]
    pos = np.minimum(np.searchsorted(ordered, new_keys), len(ordered) - 1)
    return np.where(ordered[pos] == new_keys, order[pos], -1).astype(np.int64)


def check_compatible(new: Manifest, base: Manifest) -> None:
    """A delta completes its base only if both read the same way; the base must be a full version."""
    if base.base is not None:
        raise Conflict(
            f"the base is itself a delta (over v{base.base.number}); deltas are one deep: export a full "
            "version (keep export without --base) and make deltas over it"
        )
    mine = (new.format_version, new.dims, new.dtype, new.interaction, new.strategy, _layout(new))
    theirs = (base.format_version, base.dims, base.dtype, base.interaction, base.strategy, _layout(base))
    if mine != theirs:
        raise Conflict(
            f"a delta must read like its base: (format, dims, dtype, interaction, strategy, uc layout) "
            f"{mine} here, {theirs} in the base"
        )


def check_base(manifest: Manifest, records: list[VersionRecord]) -> None:
    """Before a delta is written: its base exists, is ready, is the very publish and content the delta
    names (issue 11's identity rules), is a full version, and reads like it. Conflict (409) otherwise."""
    base = manifest.base
    if base is None:
        return
    record = next((r for r in records if r.version == base.number), None)
    if record is None:
        raise Conflict(f"the delta's base {base} does not exist (deleted?); publish a full version")
    if record.identity != base:
        raise IdentityMismatch(
            f"the delta names base {base}, but version {base.number} is {record.identity}: it was made "
            "against other knowledge; export it again over the version GKC holds, or a full version"
        )
    if record.state != READY:
        raise Conflict(f"the delta's base {base} is {record.state}, not ready; publish a full version")
    if record.base is not None:
        raise Conflict(
            f"the delta's base v{base.number} is itself a delta (over v{record.base.number}); deltas are one "
            "deep: publish a full version"
        )
    if (record.dims, record.dtype) != (manifest.dims, manifest.dtype):
        raise Conflict(
            f"a delta must read like its base: dims {manifest.dims} / {manifest.dtype} here, "
            f"{record.dims} / {record.dtype} in v{base.number}"
        )


def _layout(m: Manifest) -> Any:
    return m.source.get("uc_layout")


def select(new: Bundle, base: Bundle, rule: Rule) -> dict[str, np.ndarray]:
    """Per block, the rows of the full export ``new`` that go into a ``moved`` delta (bool masks);
    refuses removals."""
    if rule.kind != "moved":
        raise ValueError("select() takes the moved rule; a seen delta is computed apart (select_seen)")
    check_compatible(new.manifest, base.manifest)
    masks: dict[str, np.ndarray] = {}
    for block in BLOCKS:
        at = align(keys(new, block), keys(base, block))
        _refuse_removal(block, int((at >= 0).sum()), len(keys(base, block)))
        masks[block] = (at < 0) | _moved(new, base, block, at, rule.epsilon)
    return masks


def select_seen(
    part: Bundle, base: Bundle, rule: Rule, users: np.ndarray, items: np.ndarray
) -> dict[str, np.ndarray]:
    """Masks of a ``seen`` (or ``seen-pairs``) delta computed from its entries alone: ``part`` is the new
    extractor's export restricted to the rule's users, items (and pairs) (every new entry is one of
    theirs: new ids and pairs come from the new days), so all of it goes in. ``users`` / ``items``:
    every id the new extractor exports. Refuses what would leave a base entry the new export lacks: a
    base user or item not among those, or a base (user, category) of a seen user (a seen pair) that
    ``part`` lacks. (A base pair not seen stays the base's: the log up to the base's window, where it
    comes from, is the new export's too.)"""
    if rule.kind not in ("seen", "seen-pairs") or rule.seen_users is None:
        raise ValueError("select_seen() takes a seen rule with its users and items")
    if rule.kind == "seen-pairs" and rule.seen_pairs is None:
        raise ValueError("the seen-pairs rule needs its pairs")
    check_compatible(part.manifest, base.manifest)
    for block, known in (("users", users), ("items", items)):
        base_keys = keys(base, block)
        _refuse_removal(block, int(np.isin(base_keys, known).sum()), len(base_keys))
    if rule.seen_pairs is not None:
        theirs = np.isin(keys(base, "ucs"), rule.seen_pairs)
    else:
        theirs = np.isin(base.uc_user_ids, rule.seen_users)
    found = int((align(keys(base, "ucs")[theirs], keys(part, "ucs")) >= 0).sum())
    _refuse_removal("ucs", found, int(theirs.sum()))
    return {block: np.ones(len(keys(part, block)), dtype=bool) for block in BLOCKS}


def _refuse_removal(block: str, found: int, n_base: int) -> None:
    if found != n_base:
        raise Conflict(
            f"{n_base - found} {block} entries of the base are not in this export; a delta cannot remove "
            "entries: export a full version"
        )


def _moved(new: Bundle, base: Bundle, block: str, at: np.ndarray, epsilon: float) -> np.ndarray:
    """Rows whose stored bytes differ (``epsilon`` 0) or that moved by more than ``epsilon`` relative."""
    m = new.manifest
    dim = {"users": m.dims.user, "items": m.dims.item, "ucs": m.dims.uc}[block]
    out = np.zeros(len(at), dtype=bool)
    for start in range(0, len(at), CHUNK):
        stop = min(start + CHUNK, len(at))
        where = at[start:stop]
        have = np.flatnonzero(where >= 0)
        if not len(have):
            continue
        mine = new.rows(block, start, stop)[have]
        theirs = _rows_at(base, block, where[have])
        if epsilon <= 0:
            changed = (mine != theirs).any(axis=1)
        else:
            a = quant.dequantize(mine, m.dtype, dim)
            b = quant.dequantize(theirs, m.dtype, dim)
            changed = np.linalg.norm(a - b, axis=1) > epsilon * np.linalg.norm(b, axis=1)
        out[start + have[changed]] = True
        # Both bundles are read through once: their pages go as they are compared, else a memory-mapped
        # pair of K̂_uc blocks (most of two versions) stays resident (a base row touched again is read
        # back from the file).
        new.release(block, start, stop)
        base.release(block, int(where[have].min()), int(where[have].max()) + 1)
    return out


def _rows_at(bundle: Bundle, block: str, rows: np.ndarray) -> np.ndarray:
    """Stored rows at arbitrary positions (no whole-block copy for int8)."""
    vectors, scales = BLOCK_FIELDS[block]
    sc = getattr(bundle, scales)
    return quant.encode_rows(getattr(bundle, vectors)[rows], None if sc is None else sc[rows])


def write(
    new: Bundle,
    masks: dict[str, np.ndarray],
    base: VersionIdentity,
    rule: Rule,
    out: str | os.PathLike[str],
    full_counts: Counts | None = None,
) -> Path:
    """Write the delta bundle to ``out``: ``new``'s stored rows under ``masks``, copied a chunk at a
    time (a memory-mapped ``new`` is never held whole: K̂_uc is most of a version), its manifest naming
    ``base``; ``full_counts``: the whole export's (default ``new``'s own, when ``new`` is the whole
    export)."""
    m = new.manifest
    counts = Counts(int(masks["users"].sum()), int(masks["items"].sum()), int(masks["ucs"].sum()))
    delta_source = source_of(rule, full_counts or m.counts, base)
    writer = BundleWriter(out, counts, m.dims, m.dtype)
    try:
        for block, name in (("users", "users"), ("items", "items"), ("ucs", "uc")):
            vectors, scales = (getattr(new, f) for f in BLOCK_FIELDS[block])
            for start in range(0, len(vectors), CHUNK):
                picked = np.flatnonzero(masks[block][start : start + CHUNK]) + start
                if len(picked):
                    writer.append_stored(name, vectors[picked], None if scales is None else scales[picked])
                new.release(block, start, start + CHUNK)

        def ids(name: str, block: str) -> np.ndarray:
            return np.asarray(getattr(new, name))[masks[block]]

        return writer.finish(
            user_ids=ids("user_ids", "users"),
            item_ids=ids("item_ids", "items"),
            uc_user_ids=ids("uc_user_ids", "ucs"),
            uc_category_ids=ids("uc_category_ids", "ucs"),
            strategy=m.strategy,
            source={**m.source, "delta": delta_source},
            metrics=m.metrics,
            created=m.created,
            base=base,
        )
    except BaseException:
        writer.abort()
        raise


def source_of(rule: Rule, full_counts: Counts, base: VersionIdentity) -> dict[str, Any]:
    """A delta manifest's ``source.delta``: its rule, the whole export's counts and its base."""
    return {**rule.describe(), "full_counts": vars(full_counts), "base": base.to_json()}


def fold(base: Bundle, delta: Bundle) -> Bundle:
    """Compaction: the full bundle that ``delta`` over ``base`` reads as (the base's rows, those the
    delta holds replaced, the delta's new ones appended)."""
    if delta.manifest.base is None:
        raise BundleError("not a delta bundle (its manifest names no base)")
    check_compatible(delta.manifest, base.manifest)
    parts: dict[str, Any] = {}
    counts = []
    for block in BLOCKS:
        at = align(keys(delta, block), keys(base, block))
        keep = np.ones(len(keys(base, block)), dtype=bool)
        keep[at[at >= 0]] = False
        id_names = {"users": ("user_ids",), "items": ("item_ids",), "ucs": ("uc_user_ids", "uc_category_ids")}
        for name in (*id_names[block], *BLOCK_FIELDS[block]):
            a, b = getattr(base, name), getattr(delta, name)
            parts[name] = None if a is None else np.concatenate([a[keep], b])
        counts.append(int(keep.sum()) + len(keys(delta, block)))
    manifest = replace(
        delta.manifest,
        counts=Counts(*counts),
        base=None,
        checksums={},
        source={k: v for k, v in delta.manifest.source.items() if k != "delta"},
    )
    folded = Bundle(manifest=manifest, **parts)
    validate(folded)
    return folded


def entries(counts: Counts) -> int:
    return counts.users + counts.items + counts.user_categories
