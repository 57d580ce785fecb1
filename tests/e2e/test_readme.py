"""The README's commands, run as written and in the README's order, so the README cannot drift.

Every ```` ```sh ```` block of README.md is one step of a newcomer's session: the blocks are joined into
one bash script (``set -euo pipefail``; variables and background jobs carry over from block to block, as
in a terminal) and run in an empty directory with this checkout's ``keep`` first on ``PATH``. The only
edits are the service ports: the README's defaults (50051, 8081, 50052, 8082) become free ports, given to
the services through their ``GKC_*`` / ``RANKER_*`` port settings, so the test never touches a service
already running on the machine. GKC runs on its embedded Redis under ``./.keep/gkc``.

Issue 18 (a newcomer's path) found five README commands that failed as written; this test runs them all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from contract import artifact
from gkc.local_redis import free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: The README's default ports, replaced by free ones (the services read the same from their settings).
PORTS = {
    "50051": "GKC_GRPC_PORT",
    "8081": "GKC_HTTP_PORT",
    "50052": "RANKER_GRPC_PORT",
    "8082": "RANKER_HTTP_PORT",
}
#: The newcomer's path, in the order the README must give it (issue 18).
PATH_ORDER = (
    "keep data synth",
    "keep pretrain",
    "keep export",
    "keep serve gkc",
    "keep publish",
    "keep train",
    "keep evaluate",
    "keep serve ranker",
    "/v1/rank",
    "--init runs/ext",
    "keep versions activate",
    "--init models/",
)
MARK = "@@readme-block"


def sh_blocks(text: str) -> list[str]:
    """The bodies of the ```` ```sh ```` fenced blocks, in order."""
    return [m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```\s*$", text, flags=re.M | re.S)]


def test_the_readme_gives_the_whole_path_in_order() -> None:
    script = "\n".join(sh_blocks(README.read_text()))
    where = [script.find(step) for step in PATH_ORDER]
    assert -1 not in where, [s for s, w in zip(PATH_ORDER, where, strict=True) if w < 0]
    assert where == sorted(where), "the README's steps are out of order"


def _script(blocks: list[str], ports: dict[str, int]) -> str:
    lines = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",  # the services end with the test
        "set -x",
    ]
    for n, block in enumerate(blocks):
        for default, port in ports.items():
            block = re.sub(rf"(?<![0-9]){default}(?![0-9])", str(port), block)
        lines += [f"echo {MARK} {n}", block]
    return "\n".join(lines) + "\n"


def _outputs(stdout: str) -> dict[int, str]:
    parts = re.split(rf"^{MARK} (\d+)$", stdout, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _json_lines(text: str) -> list[dict[str, object]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~6 min alone; three times that on a machine shared by several test runs
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    blocks = sh_blocks(README.read_text())
    ports = {default: free_port() for default in PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GKC_", "RANKER_", "KEEP_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({setting: str(ports[default]) for default, setting in PORTS.items()})
    env["RANKER_RELOAD_POLL_S"] = "0.5"
    (tmp_path / "session.sh").write_text(_script(blocks, ports))
    proc = subprocess.run(
        ["bash", "session.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    (tmp_path / "session.out").write_text(proc.stdout)
    logs = "".join(
        f"\n--- {name}\n{(tmp_path / name).read_text()[-3000:]}"
        for name in ("gkc.log", "ranker.log")
        if (tmp_path / name).is_file()
    )
    assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{proc.stdout[-3000:]}{logs}"
    out = _outputs(proc.stdout)
    assert sorted(out) == list(range(len(blocks)))
    by_step = {step: next(n for n, b in enumerate(blocks) if step in b) for step in PATH_ORDER}

    # the first publish is version 1 and becomes active; the next day's is version 2
    assert "1" in out[by_step["keep publish"]].splitlines()
    evaluated = [r for r in _json_lines(out[by_step["keep evaluate"]]) if "gauc" in r]
    assert len(evaluated) == 2 and all(0.0 < float(str(r["gauc"])) < 1.0 for r in evaluated)
    ranked = _json_lines(out[by_step["/v1/rank"]])[-1]
    assert len(ranked["scores"]) == 2 and ranked["degraded"] is False  # type: ignore[arg-type]
    # the ranker knows exactly the user's clicks in the log `keep features` read (capped at 50)
    asked = json.loads(re.search(r"-d '(\{.*\})'", blocks[by_step["/v1/rank"]]).group(1))  # type: ignore[union-attr]
    day1 = pd.read_parquet(tmp_path / "data/train_day1.parquet")
    clicks = int(day1.loc[day1["user_id"] == asked["user_id"], "click"].sum())
    assert clicks > 0 and f"{clicks} click" in README.read_text()  # the README's sentence says how many
    assert ranked["knowledge_version"] == 1 and ranked["unknown_items"] == 0
    assert ranked["history_len"] == min(clicks, 50)
    assert (tmp_path / "runs/exp/results.json").is_file()
    assert "2" in out[by_step["--init models/"]].splitlines()
    day2 = artifact.load(tmp_path / "models/day2")
    assert day2.pinned_version == 2 and day2.training.warm_start
