"""``keep bench gkc --quick`` runs end to end and prints one JSON object with both measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest


def _bench(*flags: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "gkc", "--quick", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("gkc_c1", "raw_c1", "gkc_float16_c1", "gkc_aio_c1", "gkc_c16", "raw_c16"):
        assert {"p50_ms", "p99_ms", "rps"} <= set(result[key]), key
        assert result[key]["requests"] > 0
    assert result["ratio"]["p99_c1"] == round(result["gkc_c1"]["p99_ms"] / result["raw_c1"]["p99_ms"], 2)
    assert result["ratio"]["p99_c1_aio"] == round(
        result["gkc_aio_c1"]["p99_ms"] / result["raw_c1"]["p99_ms"], 2
    )
    assert set(result["targets_met"]) == {
        "p99_c1_le_2x_raw",
        "p99_c1_lt_3ms",
        "rps_c16_ge_800",
        "aio_p99_c1_le_2x_raw",
        "aio_p99_c1_lt_3ms",
    }
    assert 0.4 < result["float16"]["response_bytes_ratio"] < 0.6
    return result


@pytest.mark.slow
def test_bench_gkc_quick_prints_both_measurements_and_ratio() -> None:
    assert _bench()["cluster"] is False


@pytest.mark.slow
def test_bench_gkc_cluster_quick_runs_against_a_local_3_master_cluster() -> None:
    result = _bench("--cluster")
    assert result["cluster"] is True and result["redis_masters"] == 3
