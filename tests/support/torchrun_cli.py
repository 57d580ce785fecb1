"""Run a ``keep`` subcommand as 2 processes under ``torchrun`` on 127.0.0.1; return rank 0's JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gkc.local_redis import free_port
from trainer.distributed import BACKEND_ENV

ROOT = Path(__file__).resolve().parents[2]


def torchrun_keep(command: str, *args: str, nproc: int = 2) -> dict[str, object]:
    """``python -m torch.distributed.run --nproc_per_node N -m trainer COMMAND ARGS``, gloo, 1 thread each."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "trainer",
        command,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(BACKEND_ENV, None)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # only rank 0 reports (and writes)
    summary: dict[str, object] = json.loads(lines[0])
    return summary
