"""Delta bundles (:mod:`gkc.delta`): what goes in under each rule, what is refused, and the fold
(compaction) that gives back the new export bit for bit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gkc import bundle as gkc_bundle
from gkc import delta as gkc_delta
from gkc.bundle_reader import BundleReader
from gkc.bundle_writer import BundleWriter, convert
from gkc.manifest import BundleError, Counts, Manifest
from gkc.store import VersionIdentity
from services.errors import Conflict, InvalidArgument

BASE_ID = VersionIdentity(3, "ab" * 8, "c" * 64)


def _bundle(
    users: int, items: int, seed: int = 0, dtype: str = "float32", vectors: dict[str, Any] | None = None
) -> gkc_bundle.Bundle:
    rng = np.random.default_rng(seed)
    vectors = vectors or {}
    uc_u = [f"u{u}" for u in range(users) for _ in range(2)]
    uc_c = [f"c{(u + k) % 5}" for u in range(users) for k in range(2)]
    return gkc_bundle.build(
        user_ids=[f"u{u}" for u in range(users)],
        user_vectors=vectors.get("users", rng.normal(size=(users, 4))),
        item_ids=[f"i{i}" for i in range(items)],
        item_vectors=vectors.get("items", rng.normal(size=(items, 4))),
        uc_user_ids=uc_u,
        uc_category_ids=uc_c,
        uc_vectors=vectors.get("ucs", rng.normal(size=(len(uc_u), 3))),
        source={"uc_layout": ["kuc_hat:click"]},
        dtype=dtype,
    )


def _continued(base: gkc_bundle.Bundle, dtype: str = "float32") -> gkc_bundle.Bundle:
    """The base's float32 vectors plus 2 new users (their pairs) and 3 new items; user 1, item 4 and
    the pairs of user 5 changed; everything else bit-equal."""
    u = np.concatenate([base.dequantized("users"), np.ones((2, 4))])
    i = np.concatenate([base.dequantized("items"), np.full((3, 4), 2.0)])
    c = np.concatenate([base.dequantized("ucs"), np.full((4, 3), 3.0)])
    u[1] += 1.0
    i[4] *= -1
    c[10:12] += 0.5  # user 5's two pairs
    return _bundle(len(u), len(i), dtype=dtype, vectors={"users": u, "items": i, "ucs": c})


def _rows_by_key(b: gkc_bundle.Bundle, block: str) -> dict[str, bytes]:
    return dict(zip(gkc_delta.keys(b, block).tolist(), (r.tobytes() for r in b.rows(block)), strict=True))


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_moved_delta_holds_new_and_changed_rows_and_folds_back_to_the_new_export(
    dtype: str, tmp_path: Any
) -> None:
    base = _bundle(10, 20, dtype=dtype)
    new = _continued(base, dtype)
    rule = gkc_delta.Rule()
    path = gkc_delta.write(new, gkc_delta.select(new, base, rule), BASE_ID, rule, tmp_path / "d")
    delta = gkc_bundle.load(path)  # written a chunk at a time, checksummed
    assert delta.user_ids.tolist() == ["u1", "u10", "u11"]
    assert delta.item_ids.tolist() == ["i4", "i20", "i21", "i22"]
    assert sorted(set(delta.uc_user_ids.tolist())) == ["u10", "u11", "u5"]
    assert delta.manifest.base == BASE_ID
    assert delta.manifest.source["delta"]["full_counts"] == vars(new.manifest.counts)
    folded = gkc_delta.fold(base, delta)
    assert folded.manifest.base is None and folded.manifest.counts == new.manifest.counts
    for block in gkc_delta.BLOCKS:  # bit for bit, entry by entry
        assert _rows_by_key(folded, block) == _rows_by_key(new, block)


def test_epsilon_keeps_small_moves_out_and_bounds_what_reads_through() -> None:
    base = _bundle(6, 8)
    u = base.dequantized("users").copy()
    u[0] *= 1.001  # a 0.1 % move
    u[1] *= 1.5
    same = {"items": base.dequantized("items"), "ucs": base.dequantized("ucs")}
    new = _bundle(6, 8, vectors={"users": u, **same})
    masks = gkc_delta.select(new, base, gkc_delta.Rule("moved", epsilon=0.01))
    assert masks["users"].tolist() == [False, True, False, False, False, False]
    assert not masks["items"].any() and not masks["ucs"].any()
    assert gkc_delta.select(new, base, gkc_delta.Rule())["users"][:2].tolist() == [True, True]


def _part(b: gkc_bundle.Bundle, users: list[str], items: list[str]) -> gkc_bundle.Bundle:
    """``b`` restricted to ``users`` (K̂_u and their K̂_uc) and ``items``: what a seen export computes."""
    u, i, p = np.isin(b.user_ids, users), np.isin(b.item_ids, items), np.isin(b.uc_user_ids, users)
    return replace(
        b,
        manifest=replace(b.manifest, counts=Counts(int(u.sum()), int(i.sum()), int(p.sum()))),
        user_ids=b.user_ids[u],
        user_vectors=b.user_vectors[u],
        item_ids=b.item_ids[i],
        item_vectors=b.item_vectors[i],
        uc_user_ids=b.uc_user_ids[p],
        uc_category_ids=b.uc_category_ids[p],
        uc_vectors=b.uc_vectors[p],
    )


def test_the_seen_rule_takes_the_seen_entries_and_refuses_what_would_remove_a_base_entry() -> None:
    """A seen delta is the export of the seen users (with all their pairs) and items alone (new ids are
    seen: they come from the new days); it is refused when the new extractor lacks a base user or item,
    or the part lacks a base pair of a seen user."""
    base = _bundle(6, 8)
    new = _bundle(7, 8, seed=9)  # u6 is new
    rule = gkc_delta.Rule("seen", seen_users=np.array(["u2", "u6"]), seen_items=np.array(["i0", "i7"]))
    part = _part(new, ["u2", "u6"], ["i0", "i7"])
    masks = gkc_delta.select_seen(part, base, rule, new.user_ids, new.item_ids)
    assert {k: int(m.sum()) for k, m in masks.items()} == {
        "users": 2,
        "items": 2,
        "ucs": len(part.uc_user_ids),
    }
    with pytest.raises(Conflict, match="1 users entries of the base are not in this export"):
        gkc_delta.select_seen(part, base, rule, new.user_ids[new.user_ids != "u3"], new.item_ids)
    with pytest.raises(Conflict, match="1 items entries"):
        gkc_delta.select_seen(part, base, rule, new.user_ids, new.item_ids[1:])
    short = _part(new, ["u6"], ["i0", "i7"])  # u2's pairs missing
    with pytest.raises(Conflict, match="ucs entries of the base are not in this export"):
        gkc_delta.select_seen(short, base, rule, new.user_ids, new.item_ids)
    with pytest.raises(ValueError, match="moved rule"):
        gkc_delta.select(new, base, rule)


def test_refusals_removed_entries_other_layouts_and_deltas_over_deltas() -> None:
    base = _bundle(6, 8)
    with pytest.raises(Conflict, match="cannot remove"):
        gkc_delta.select(_bundle(5, 8), base, gkc_delta.Rule())
    with pytest.raises(Conflict, match="must read like its base"):
        gkc_delta.select(_bundle(6, 8, dtype="int8"), base, gkc_delta.Rule())
    delta_base = replace(base, manifest=replace(base.manifest, base=BASE_ID))
    with pytest.raises(Conflict, match="one deep"):
        gkc_delta.select(_bundle(6, 8), delta_base, gkc_delta.Rule())
    with pytest.raises(BundleError, match="not a delta"):
        gkc_delta.fold(base, base)


def test_a_delta_manifest_names_its_base_in_its_identity_and_is_parsed_strictly(tmp_path: Any) -> None:
    base = _bundle(6, 8)
    new = _continued(base)
    rule = gkc_delta.Rule()
    path = gkc_delta.write(new, gkc_delta.select(new, base, rule), BASE_ID, rule, tmp_path / "d")
    loaded = gkc_bundle.load(path)
    assert loaded.manifest.base == BASE_ID
    other = replace(loaded.manifest, base=replace(BASE_ID, publish_id="ff" * 8))
    assert other.content_checksum() != loaded.manifest.content_checksum()
    assert "base" not in base.manifest.to_json()  # full manifests (and their checksums) as before
    for bad in ({"number": 3}, {"number": 0, "publish_id": "x", "checksum": "y"}, "v3"):
        with pytest.raises(BundleError, match="base"):
            Manifest.from_json({**loaded.manifest.to_json(), "base": bad})
    with pytest.raises(InvalidArgument, match="delta over v3"):
        BundleReader(loaded)  # alone it would answer "not found" for everything its base holds
    with pytest.raises(BundleError, match="base's dtype"):  # converted, it would lose its base
        convert(loaded, "int8", tmp_path / "d8")


def test_stored_rows_are_copied_as_they_are_and_bad_ones_refused(tmp_path: Any) -> None:
    """A delta copies stored rows (int8 codes and scales) without quantizing them again."""
    src = _bundle(6, 8, dtype="int8")
    writer = BundleWriter(tmp_path / "copy", src.manifest.counts, src.manifest.dims, "int8")
    for block, name in (("users", "users"), ("items", "items"), ("ucs", "uc")):
        vectors, scales = (getattr(src, f) for f in gkc_bundle.BLOCK_FIELDS[block])
        writer.append_stored(name, vectors[:2], scales[:2])
        writer.append_stored(name, vectors[2:], scales[2:])
    copied = gkc_bundle.load(
        writer.finish(
            user_ids=src.user_ids,
            item_ids=src.item_ids,
            uc_user_ids=src.uc_user_ids,
            uc_category_ids=src.uc_category_ids,
        )
    )
    for block in gkc_delta.BLOCKS:
        assert np.array_equal(copied.rows(block), src.rows(block)), block
    bad = BundleWriter(tmp_path / "bad", src.manifest.counts, src.manifest.dims, "int8")
    assert src.user_scales is not None
    codes, scales = src.user_vectors[:1].copy(), src.user_scales[:1].copy()
    with pytest.raises(BundleError, match="not int8"):
        bad.append_stored("users", codes.astype(np.float32), scales)
    with pytest.raises(BundleError, match="need their scales"):
        bad.append_stored("users", codes)
    codes[0, 0] = -128
    with pytest.raises(BundleError, match="outside"):
        bad.append_stored("users", codes, scales)
    with pytest.raises(BundleError, match="negative"):
        bad.append_stored("users", src.user_vectors[:1], -scales)
    bad.abort()


def _resident_kib(path: Any) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="needs madvise")
def test_comparing_memory_mapped_bundles_leaves_their_pages_behind(tmp_path: Any) -> None:
    """A moved delta over two memory-mapped exports reads both K̂_uc blocks once: their pages go as they
    are compared (on `medium` the two blocks kept 3.5 GiB resident: a 4.3 GiB peak, 1.5 GiB since)."""
    rng = np.random.default_rng(0)
    users = 3 * gkc_delta.CHUNK // 2  # two pairs each: three chunks of K̂_uc
    ucs = rng.normal(size=(2 * users, 64)).astype(np.float32)
    base_dir = gkc_bundle.save(_bundle(users, 8, vectors={"ucs": ucs}), tmp_path / "base")
    ucs[::7] += 1.0
    new_dir = gkc_bundle.save(_bundle(users, 8, vectors={"ucs": ucs}), tmp_path / "new")
    base = gkc_bundle.load(base_dir, mmap=True)
    new = gkc_bundle.load(new_dir, mmap=True)
    masks = gkc_delta.select(new, base, gkc_delta.Rule())
    assert int(masks["ucs"].sum()) == len(range(0, 2 * users, 7))  # the comparison itself still holds
    block_kib = ucs.nbytes // 1024  # 48 MiB per bundle
    for where in (base_dir, new_dir):
        resident = _resident_kib(where / "uc_vectors.npy")
        assert resident < block_kib // 10, f"{where.name}: {resident} KiB of {block_kib} still resident"


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="needs madvise")
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_loading_a_memory_mapped_bundle_checks_it_without_keeping_it_resident(
    dtype: str, tmp_path: Any
) -> None:
    """``load(mmap=True)`` scans every vector (finite floats, int8 codes within ±127) and lets the pages
    go behind the scan; the int8 code check kept them (the float check did not)."""
    users = 60_000
    ucs = np.random.default_rng(1).normal(size=(2 * users, 256)).astype(np.float32)
    path = gkc_bundle.save(_bundle(users, 8, dtype=dtype, vectors={"ucs": ucs}), tmp_path / "b")
    size_kib = (path / "uc_vectors.npy").stat().st_size // 1024
    loaded = gkc_bundle.load(path, mmap=True)
    assert loaded.uc_vectors.shape == (2 * users, 256)
    resident = _resident_kib(path / "uc_vectors.npy")
    assert resident < size_kib // 10, f"{resident} KiB of {size_kib} still resident"
