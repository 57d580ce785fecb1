"""``bench.tree_peak``: the peak counts a whole process tree, not only the command's own process."""

from __future__ import annotations

import sys

import pytest

from bench.tree_peak import run_sampled

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: The command itself holds nothing; a grandchild holds 160 MiB of touched pages for a second.
_PARENT = (
    "import subprocess, sys; "
    "subprocess.run([sys.executable, '-c', "
    "'import time; b = b\"x\" * (160 << 20); time.sleep(1.0)'], check=True)"
)


def test_the_peak_holds_a_grandchilds_memory() -> None:
    result = run_sampled([sys.executable, "-c", _PARENT], every=0.05)
    assert result["rc"] == 0
    assert result["max_processes"] >= 2
    assert result["peak_rss_mib"] >= 160
    assert 150 <= result["peak_pss_mib"] <= result["peak_rss_mib"]


def test_a_failing_command_keeps_its_exit_code() -> None:
    assert run_sampled([sys.executable, "-c", "raise SystemExit(3)"])["rc"] == 3
