"""``keep bench ranker --quick`` starts Redis, GKC and a ranker privately and prints one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.servers import ROOT


def test_quick_bench_prints_one_json_object() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "ranker", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0])
    for key in (
        "c1",
        "c16",
        "c1_sequential",
        "c16_sequential",
        "c16_no_backpressure",
        "c1_eager",
        "c16_eager",
    ):
        run = result[key]
        assert run["requests"] > 0 and run["rps"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert 0.0 <= run["gkc_share"] <= 1.0
        assert 0 <= run["degraded"] <= run["requests"] and run["refused"] >= 0
        for stage in ("model", "handoff", "queue"):
            assert run[f"{stage}_ms_mean"] >= 0
        assert run["ranker_faults_per_request"] >= 0
    assert result["candidates"] == 500
    assert all(v > 0 for v in result["overlap_knowledge"].values())
    alone = result["model_alone"]
    assert alone["samples_per_s"] > 0 and result["model_step_vs_alone"] > 0
    assert 0.0 <= result["c1"]["features_share"] <= 1.0 and result["c1"]["features_ms_mean"] > 0
    reference = alone["levers"]["reference"]
    assert reference["samples_per_s"] > 0 and reference["max_abs_score_diff"] == 0.0
    eager = alone["levers"]["eager"]  # the served path: float rounding away from the reference
    assert eager["samples_per_s"] > 0 and eager["max_abs_score_diff"] <= 1e-6 and eager["within_error"]
    scripted = alone["levers"]["torchscript"]  # the served default: the eager path's operations, in C++
    assert scripted["samples_per_s"] > 0 and scripted["max_abs_score_diff"] == eager["max_abs_score_diff"]
    assert alone["torchscript"] is True
    # two rankers, TorchScript and eager, answered the same requests with the same scores
    assert result["torchscript"]["max_abs_score_diff"] == 0.0 and result["torchscript"]["c16_rps_ratio"] > 0
    int8 = alone["levers"]["int8_dynamic"]
    assert 0 < int8["max_abs_score_diff"] < 0.5  # quantized: close to float32, not equal
    assert set(alone["malloc_default"]["levers"]) == {"reference", "eager"}
    assert alone["per_user_cache_bound"]["user_side_share"] > 0
    assert alone["micro_batch_bound"]["two_requests_ms"] > 0 and alone["micro_batch_bound"]["ratio"] > 0
    for path in ("api", "stream"):
        assert 0 < result["ingest_visible"][path]["p50_ms"] <= result["ingest_visible"][path]["p99_ms"]
    assert set(result["targets_met"]) == {
        "p99_c1_le_10ms",
        "rps_c16_ge_300",
        "model_step_le_1.3x_alone",
        "c16_not_degraded",
        "ingest_p99_le_50ms",
    }
