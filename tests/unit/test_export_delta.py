"""``keep export --base``: a delta of a continued extractor over the bundle of its base, by each rule;
folded back it is the full export bit for bit (``moved``); what is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.log import read_log
from contract.schema import day_of
from gkc import bundle as gkc_bundle
from gkc import delta as gkc_delta
from gkc.store import VersionIdentity
from services.errors import Conflict
from tests.support.stage1_data import continued_world
from trainer.cli import main
from trainer.export_delta import DeltaSpec, NewExport, export_delta

SIZE = {"users": 40, "items": 60, "categories": 5, "days": 4, "rows_per_day": 800}


@pytest.fixture(scope="module")
def continued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base extractor on days 0-1 and its one-day continuation (day 2), with their full bundles."""
    return continued_world(tmp_path_factory.mktemp("delta"))


def _spec(paths: dict[str, Path], **kw: Any) -> DeltaSpec:
    return DeltaSpec(base=4, base_bundle=paths["base_bundle"], api_url="http://unused", **kw)


def _identity(paths: dict[str, Path]) -> VersionIdentity:
    return VersionIdentity(4, "ab" * 8, gkc_bundle.read_manifest(paths["base_bundle"]).content_checksum())


def _full(paths: dict[str, Path]) -> NewExport:
    return NewExport(paths["cont"], progress=False)


def test_a_moved_delta_folds_back_to_the_full_export_bit_for_bit(continued: dict[str, Path]) -> None:
    out = continued["root"] / "moved"
    summary = export_delta(_full(continued), out, _spec(continued), _identity(continued))
    delta, base = gkc_bundle.load(out), gkc_bundle.load(continued["base_bundle"])
    full = gkc_bundle.load(continued["full"])
    assert delta.manifest.base == _identity(continued)
    assert summary["entries"] == gkc_delta.entries(delta.manifest.counts)
    assert summary["full_entries"] == gkc_delta.entries(full.manifest.counts)
    folded = gkc_delta.fold(base, delta)
    for block in gkc_delta.BLOCKS:
        got = dict(zip(gkc_delta.keys(folded, block).tolist(), map(bytes, folded.rows(block)), strict=True))
        want = dict(zip(gkc_delta.keys(full, block).tolist(), map(bytes, full.rows(block)), strict=True))
        assert got == want, block
    assert not (continued["root"] / ".moved.full").exists()  # the scratch export is gone


def test_the_seen_rule_writes_what_the_new_day_touched(continued: dict[str, Path]) -> None:
    out = continued["root"] / "seen"
    summary = export_delta(_full(continued), out, _spec(continued, rule="seen"), _identity(continued))
    delta = gkc_bundle.load(out)
    df = read_log(continued["root"] / "super.parquet")
    days = day_of(df["ts"].to_numpy())
    new_day = df[days == days.min() + 2]
    assert set(delta.user_ids.tolist()) == {str(u) for u in new_day["user_id"].unique()}
    assert set(delta.item_ids.tolist()) == {str(i) for i in new_day["item_id"].unique()}
    assert summary["rule"] == "seen"
    assert delta.manifest.source["delta"]["rule"] == "seen"
    # Only the seen entries were computed (half of the users, and their pairs), not a full export ...
    full = gkc_bundle.load(continued["full"])
    assert summary["full_counts"] == vars(full.manifest.counts)
    assert summary["users"] == len(delta.user_ids) == summary["delta_counts"]["users"] < len(full.user_ids)
    assert summary["user_categories"] == len(delta.uc_user_ids) < len(full.uc_user_ids)
    assert summary["share"] < 0.8
    # ... and each equals the full export's entry of its key (other batches: equal to float rounding).
    for block in gkc_delta.BLOCKS:
        want = dict(zip(gkc_delta.keys(full, block).tolist(), full.rows(block), strict=True))
        for key, row in zip(gkc_delta.keys(delta, block).tolist(), delta.rows(block), strict=True):
            np.testing.assert_allclose(
                row.view(np.float32), want[key].view(np.float32), rtol=1e-5, atol=1e-6, err_msg=key
            )


def test_refusals(continued: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    other = VersionIdentity(4, "ab" * 8, "0" * 64)  # version 4 is other content than --base-bundle
    with pytest.raises(Conflict, match="is not the content of GKC version"):
        export_delta(_full(continued), continued["root"] / "x", _spec(continued), other)
    # the seen rule needs an extractor that continues the base's
    spec = DeltaSpec(base=4, base_bundle=continued["full"], api_url="http://unused", rule="seen")
    full_id = VersionIdentity(4, "ab" * 8, gkc_bundle.read_manifest(continued["full"]).content_checksum())
    with pytest.raises(Conflict, match="must continue the base's"):
        export_delta(_full(continued), continued["root"] / "y", spec, full_id)
    args = [
        "export",
        "--extractor",
        str(continued["cont"]),
        "--out",
        str(continued["root"] / "z"),
        "--base",
        "4",
    ]
    assert main(args) == 2
    assert "--base-bundle" in capsys.readouterr().err
    sharded = ["export", "--extractor", str(continued["cont"]), "--gkc-redis", "redis://127.0.0.1:1/0"]
    assert main([*sharded, "--base", "4", "--base-bundle", str(continued["base_bundle"])]) == 2
    assert "reads the base from GKC's store (no --base-bundle)" in capsys.readouterr().err


def test_the_seen_pairs_rule_writes_only_the_pairs_the_new_day_touched(continued: dict[str, Path]) -> None:
    out = continued["root"] / "seen_pairs"
    summary = export_delta(_full(continued), out, _spec(continued, rule="seen-pairs"), _identity(continued))
    delta, base = gkc_bundle.load(out), gkc_bundle.load(continued["base_bundle"])
    df = read_log(continued["root"] / "super.parquet")
    days = day_of(df["ts"].to_numpy())
    new_day = df[days == days.min() + 2]
    touched = {f"{u}\x1f{c}" for u, c in zip(new_day["user_id"], new_day["category_id"], strict=True)}
    assert summary["rule"] == delta.manifest.source["delta"]["rule"] == "seen-pairs"
    assert set(delta.user_ids.tolist()) == {str(u) for u in new_day["user_id"].unique()}
    full = gkc_bundle.load(continued["full"])
    pairs = set(gkc_delta.keys(delta, "ucs").tolist())
    assert pairs == touched & set(gkc_delta.keys(full, "ucs").tolist()) and pairs
    seen_users = set(delta.user_ids.tolist())
    of_seen_users = [k for k in gkc_delta.keys(full, "ucs").tolist() if k.split("\x1f")[0] in seen_users]
    assert len(pairs) < len(of_seen_users)  # the seen rule would take all of these
    # Every pair of the full export is in the delta or in the base (nothing lost), and the pairs of seen
    # users that the day did not touch read through to the base.
    folded = gkc_delta.fold(base, delta)
    assert set(gkc_delta.keys(folded, "ucs").tolist()) == set(gkc_delta.keys(full, "ucs").tolist())
    kept = set(gkc_delta.keys(base, "ucs").tolist()) - pairs
    assert any(k.split("\x1f")[0] in seen_users for k in kept)
    want = dict(zip(gkc_delta.keys(full, "ucs").tolist(), full.rows("ucs"), strict=True))
    for key, row in zip(gkc_delta.keys(delta, "ucs").tolist(), delta.rows("ucs"), strict=True):
        np.testing.assert_allclose(row.view(np.float32), want[key].view(np.float32), rtol=1e-5, atol=1e-6)


def test_the_seen_keys_are_as_narrow_as_the_ids(
    continued: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log blocks before the new days hold none of their rows; their (empty) ids must not widen the
    keys' dtype (they did: canonical ids of an empty array were <U32, every key then 3x its bytes)."""
    from trainer import export_delta as module

    monkeypatch.setattr(module, "SCAN_BATCH_ROWS", 100)  # blocks of days 0-1 hold no new-day row
    run = _full(continued).run()
    base = gkc_bundle.load(continued["base_bundle"], mmap=True)
    rule = module.seen_rule(run, continued["root"] / "super.parquet", base.manifest.source, pairs=True)
    for keys in (rule.seen_users, rule.seen_items, rule.seen_pairs):
        assert keys is not None and len(keys)
        assert keys.dtype.itemsize == 4 * int(np.char.str_len(keys).max())
