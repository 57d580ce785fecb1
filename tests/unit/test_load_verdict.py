"""``loadtests/run.py``'s verdict: one line per threshold, thresholds from the command line (issue 18:
a run with 0 errors exited non-zero on a p99 with the reason only inside the last JSON line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from loadtests.run import parse_thresholds, verdict
rows = [{"name": "gkc.BatchGet", "requests": 100, "failures": 0, "p99_ms": 12.0},
        {"name": "ops GET /healthz", "requests": 10, "failures": 1, "p99_ms": 5.0}]
print(json.dumps({"default": verdict(rows, parse_thresholds([])),
                  "raised": verdict(rows, parse_thresholds(["gkc.BatchGet=25"]), 0.2)}))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_each_threshold_gets_a_verdict_line_and_can_be_set() -> None:
    done = _run("-c", PROBE)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    default = {line: ok for ok, line in result["default"]}
    assert default["gkc.BatchGet: p99 12 ms > 10 ms"] is False
    assert default["ops GET /healthz: 1 errors in 10 requests (allowed rate 0)"] is False
    assert default["ops GET /healthz: p99 5 ms <= 100 ms"] is True
    raised = {line: ok for ok, line in result["raised"]}
    assert raised["gkc.BatchGet: p99 12 ms <= 25 ms"] is True
    assert all(raised.values())


def test_a_malformed_threshold_is_one_line() -> None:
    done = _run("loadtests/run.py", "--p99", "gkc.BatchGet")
    assert done.returncode != 0 and "--p99 takes NAME=MS" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
