"""A delta's refusal checks against a base read from the store instead of from its bundle.

A sharded delta (``keep export --base V --gkc-redis`` under torchrun) may be made over a base that was
itself written by a sharded export: there is no bundle of it anywhere. The rules stay
:func:`gkc.delta.select_seen`'s (a delta never removes an entry), read from the base version:

- every user and item the base holds is one the new extractor exports: the base's key log, split over
  the ranks (work proportional to the base, never a keyspace scan);
- every base (user, category) entry the rule touches (all of a seen user's, or the seen pairs') is in
  the delta: the hash fields of the rank's seen users in the base (work proportional to the delta).

Numpy only: the store is any :class:`BaseKeys` (``gkc.redis_store.RedisStore`` is one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from gkc.delta import pair_keys
from gkc.store import READY, VersionRecord
from services.errors import Conflict, NotFound

#: Seen users whose base fields are asked per round trip.
USERS_PER_READ = 1000


class BaseKeys(Protocol):
    """What a version holds, read from the version itself."""

    def logged_keys(self, ns: str, part: int = 0, parts: int = 1) -> Iterator[list[str]]: ...

    def user_fields(self, ns: str, user_ids: Sequence[str]) -> list[list[str]]: ...


def base_record(records: Sequence[VersionRecord], number: int) -> VersionRecord:
    """Version ``number`` as a base: it exists, is ready, is a full version and lists its keys."""
    record = next((r for r in records if r.version == number), None)
    if record is None:
        raise NotFound(f"GKC has no version {number} to be a base; `keep versions` lists them")
    if record.state != READY:
        raise Conflict(f"GKC version {number} is {record.state}, not ready: it cannot be a base")
    if record.base is not None:
        raise Conflict(f"GKC version {number} is itself a delta; deltas are one deep: use a full version")
    if not record.keylog:
        raise Conflict(
            f"GKC version {number} was published before versions listed their keys, so what it holds "
            "cannot be read without a keyspace scan: export the delta with --out and --base-bundle"
        )
    return record


def check_base_ids(
    store: BaseKeys, base: VersionRecord, users: np.ndarray, items: np.ndarray, part: int, parts: int
) -> int:
    """Refuse (409) when a user or item of ``base`` is not among ``users`` / ``items`` (every id the
    new extractor exports, canonical); this call reads batch ``part`` of every ``parts`` of the base's
    key log. Returns the keys it read."""
    missing: dict[str, set[str]] = {"users": set(), "items": set()}
    known = {"u": np.sort(users), "i": np.sort(items)}
    read = 0
    for chunk in store.logged_keys(base.namespace, part, parts):
        read += len(chunk)
        for kind, block in (("u", "users"), ("i", "items")):
            ids = np.array([k[2:] for k in chunk if k.startswith(f"{kind}:")], dtype=str)
            if len(ids):
                missing[block].update(ids[~_among(ids, known[kind])].tolist())
    for block, lacking in missing.items():
        if lacking:
            raise Conflict(
                f"{len(lacking)} {block} of the base {base.identity} are not in this export (e.g. "
                f"{sorted(lacking)[:3]}); a delta cannot remove entries: export a full version"
            )
    return read


def check_base_pairs(
    store: BaseKeys,
    base: VersionRecord,
    seen_users: np.ndarray,
    delta_pairs: np.ndarray,
    seen_pairs: np.ndarray | None = None,
) -> int:
    """Refuse (409) when a (user, category) entry of ``base`` that the rule touches is not among
    ``delta_pairs`` (keys of :func:`gkc.delta.pair_keys`): all of each seen user's base pairs, or (with
    ``seen_pairs``) those among the seen pairs. Returns the base pairs it compared."""
    ordered = np.sort(delta_pairs)
    compared, lacking = 0, 0
    example = ""
    for start in range(0, len(seen_users), USERS_PER_READ):
        users = seen_users[start : start + USERS_PER_READ]
        fields = store.user_fields(base.namespace, users.tolist())
        owner = np.repeat(users, [sum(f.startswith("c:") for f in fs) for fs in fields])
        cats = np.array([f[2:] for fs in fields for f in fs if f.startswith("c:")], dtype=str)
        if not len(cats):
            continue
        theirs = pair_keys(owner.astype(str), cats)
        if seen_pairs is not None:
            theirs = theirs[_among(theirs, np.sort(seen_pairs))]
        compared += len(theirs)
        gone = theirs[~_among(theirs, ordered)]
        lacking += len(gone)
        example = example or (str(gone[0]).replace("\x1f", " / ") if len(gone) else "")
    if lacking:
        raise Conflict(
            f"{lacking} user-category entries of the base {base.identity} that this delta replaces are not "
            f"in this export (e.g. {example}); a delta cannot remove entries: export a full version"
        )
    return compared


def _among(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Per value, whether the sorted array ``ordered`` holds it."""
    if not len(ordered):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[at] == values
