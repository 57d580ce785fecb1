"""``python -m bench.tree_peak CMD ...``: run a command and print, as one JSON line on stderr, its wall
time and the peak of its whole process tree's summed RSS and PSS, sampled every ``--every`` seconds.

For engines that run as many processes (Spark's JVM beside Python, Ray's raylet, GCS and workers), where
one process' peak says little: docs/scale.md compares the sequence stage's engines with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench import procfs

MIB = 1 << 20


def run_sampled(cmd: list[str], every: float = 0.2) -> dict[str, Any]:
    """Run ``cmd`` to its end; its exit code, wall seconds and the tree's peak RSS / PSS in MiB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_rss = peak_pss = procs = 0
    while proc.poll() is None:
        pids = procfs.tree(proc.pid)
        sizes = [procfs.rollup(pid) for pid in pids]
        peak_rss = max(peak_rss, sum(r for r, _ in sizes))
        peak_pss = max(peak_pss, sum(p for _, p in sizes))
        procs = max(procs, len(pids))
        time.sleep(every)
    return {
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": round(peak_rss / MIB),
        "peak_pss_mib": round(peak_pss / MIB),
        "max_processes": procs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples (default 0.2)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args()
    if not args.cmd:
        parser.error("give a command to run")
    result = run_sampled(args.cmd, args.every)
    print(json.dumps(result), file=sys.stderr)
    sys.exit(result["rc"])


if __name__ == "__main__":
    main()
