"""``keep bench gkc --quick`` runs end to end and prints one JSON object with both measurements."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_gkc_quick_prints_both_measurements_and_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "gkc", "--quick"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("gkc_c1", "raw_c1", "gkc_c16", "raw_c16"):
        assert {"p50_ms", "p99_ms", "rps"} <= set(result[key]), key
        assert result[key]["requests"] > 0
    assert result["ratio"]["p99_c1"] == round(result["gkc_c1"]["p99_ms"] / result["raw_c1"]["p99_ms"], 2)
    assert 0.4 < result["float16"]["response_bytes_ratio"] < 0.6
