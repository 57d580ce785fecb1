"""``keep bench delta --quick`` prints one JSON object: a one-day delta's entries under each rule, and
the seen-pairs delta written straight into GKC's store."""

from __future__ import annotations

import json

import pytest

from bench.delta import RULES
from trainer.cli import main


def test_bench_delta_quick_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "delta", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scale"] == "tiny" and set(result["rules"]) == set(RULES)
    rules = result["rules"]
    full = rules["moved"]["full_counts"]
    for rule, r in rules.items():  # one continuation, one full version to compare with
        assert r["full_counts"] == full, rule
        assert r["full_entries"] == sum(full.values()) and 0 < r["entries"] <= r["full_entries"]
        assert r["share"] == round(r["entries"] / r["full_entries"], 4)
        assert r["peak_rss_mib"] > 0 and r["seconds"] > 0
    seen, pairs = rules["seen"]["delta_counts"], rules["seen-pairs"]["delta_counts"]
    # seen-pairs: the seen users and items, fewer K̂_uc (only the pairs the new day touched)
    assert (pairs["users"], pairs["items"]) == (seen["users"], seen["items"])
    assert pairs["user_categories"] < seen["user_categories"]
    # the same delta straight into GKC's store, by 1 process and by 2 torchrun ranks
    store = result["store"]
    for ranks in (1, 2):
        got = store[f"ranks_{ranks}"]
        assert got["world_size"] == ranks and got["delta_counts"] == pairs
        assert (
            got["entries"] == rules["seen-pairs"]["entries"] and got["share"] == rules["seen-pairs"]["share"]
        )
        assert 0 < got["bytes"] < store["base_bytes"] and got["peak_rss_mib"] > 0
    met = result["targets_met"]
    assert met["delta_le_30pct_any_rule"] == (min(r["share"] for r in rules.values()) <= 0.3)
