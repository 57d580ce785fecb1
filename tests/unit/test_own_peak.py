"""A benchmark step run in a child process reports its own peak RSS, not its parent's."""

from __future__ import annotations

import resource
import sys

import pytest

from bench.scale import child_result

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_CHILD = """
import json, resource
from bench.procfs import own_peak_rss
inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
print(json.dumps({"own": own_peak_rss() >> 20, "ru_maxrss": inherited}))
"""


def test_a_child_of_a_big_parent_reports_its_own_peak() -> None:
    held = b"x" * (400 << 20)  # the parent holds 400 MiB while the child runs
    got = child_result(_CHILD)
    assert len(held) == 400 << 20
    if got["ru_maxrss"] < 400:
        pytest.skip("this kernel does not carry the parent's peak into the child: nothing to tell apart")
    assert got["own"] < 200, got  # a bare interpreter with bench.procfs, not the parent's 400 MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10 >= 400
