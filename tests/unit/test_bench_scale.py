"""``keep bench scale --quick`` prints one JSON object: peak RSS and wall time per data-path step."""

from __future__ import annotations

import json

import pytest

from bench.scale import STEPS
from trainer.cli import main


@pytest.mark.slow
def test_bench_scale_quick_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "scale", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scales"] == ["tiny", "small"]
    for scale in ("tiny", "small"):
        steps = result[scale]
        assert set(steps) == set(STEPS)
        data_path = ("synth", "check", "read", "sequences", "stage")
        assert len({steps[s]["rows"] for s in data_path}) == 1  # every step saw the whole super log
        assert 0 < steps["pretrain_stream"]["rows"] < steps["read"]["rows"]  # all but the held-out day
        assert all(s["peak_rss_mib"] > 0 and s["seconds"] > 0 for s in steps.values())
        # the whole streamed pass trained every row but the held-out day's, and its export wrote entries
        assert steps["pretrain_full"]["rows"] == steps["pretrain_stream"]["rows"]
        assert steps["export"]["rows"] > 0 and steps["export"]["entries_per_s"] > 0
    assert result["small"]["read"]["rows"] > 5 * result["tiny"]["read"]["rows"]
    assert result["row_ratio"] > 5 and set(result["rss_ratio"]) == set(STEPS)
    assert set(result["stream_vs_memory_rss"]) == {"tiny", "small"}
    tables = result["tables"]["summary"]
    assert len(tables["tables_mib_per_rank"]["sharded_2_ranks"]) == 2
    assert set(tables["samples_per_s"]) == {"sharded_w1", "sharded_w2", "dense_w1", "dense_w2"}
    # the 2-rank checkpoint loaded for inference both ways (their tables read the same, or the bench fails)
    for step in ("inference_load", "continuation"):  # each both ways (their tables compared by the bench)
        ways = tables[step]
        assert set(ways) - {"half"} == {"pieces", "whole"} and all(
            w["added_peak_mib"] > 0 for w in ways.values()
        )
    # one of 2 ranks of an export by user range loads half of the user table
    assert tables["inference_load"]["half"]["anon_mib"] < tables["inference_load"]["pieces"]["anon_mib"]
