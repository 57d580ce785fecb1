"""The ``keep`` CLI as a newcomer meets it (issue 18): help that tells, one-line errors, no tracebacks.

Each test runs ``keep`` as a process, the way a user does; the refusals must be one line on stderr with
exit status 2 (no ``Traceback``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contract.log import write_log
from gkc.local_redis import free_port

if TYPE_CHECKING:
    import pandas as pd

KEEP = [sys.executable, "-m", "trainer"]


def keep(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEEP, *argv], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


def one_line_refusal(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keep: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version_help_defaults_and_log_level_anywhere() -> None:
    version = keep("--version")
    assert version.returncode == 0 and version.stdout.startswith("keep ")
    pretrain = flat(keep("pretrain", "--help", "--log-level", "debug").stdout)
    assert "(default: 2000)" in pretrain and "(default: 0.001)" in pretrain and "default: serving" in pretrain
    experiment = flat(keep("experiment", "--help").stdout)
    assert "downstream seeds per method (mean ± std) (default: 3)" in experiment
    gkc = keep("serve", "gkc", "--help").stdout
    assert "GKC_GRPC_PORT (default: 50051)" in gkc and "GKC_API_TOKEN" in gkc
    ranker = keep("serve", "ranker", "--help").stdout
    assert "RANKER_MODEL_DIR (default: .keep/models)" in ranker and "RANKER_TLS_CERT" in ranker


@pytest.mark.parametrize("service", ["gkc", "ranker"])
def test_a_busy_port_is_one_line_naming_the_setting(service: str, tmp_path: Path) -> None:
    """Was ``RuntimeError: Failed to bind`` with a traceback and exit 1."""
    prefix = service.upper()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            f"{prefix}_GRPC_PORT": str(taken.getsockname()[1]),
            f"{prefix}_HTTP_PORT": str(free_port()),
            "GKC_DEV_MODE": "true",
            "GKC_DATA_DIR": str(tmp_path / "gkc"),
            "RANKER_MODEL_DIR": str(tmp_path / "models"),
        }
        done = keep("serve", service, env=env)
    one_line_refusal(done, f"{prefix}_GRPC_PORT", "another process holds it")


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """Was ``BrokenPipeError`` (``keep versions show 2 | head``)."""
    proc = subprocess.Popen([*KEEP, "serve", "gkc", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before keep writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_missing_files_and_directories_are_one_line(tmp_path: Path) -> None:
    one_line_refusal(keep("data", "check", str(tmp_path / "nope.parquet")), "nope.parquet", "no such file")
    one_line_refusal(keep("data", "check", str(tmp_path)), "holds no Parquet files")  # a dataset dir
    one_line_refusal(
        keep("features", str(tmp_path / "nope.parquet"), "--data-dir", str(tmp_path)), "nope.parquet"
    )


def test_the_features_command_fills_the_rankers_store(tmp_path: Path) -> None:
    """``python -m ranker.features`` was outside ``keep``; both now run the same command (issue 16: into
    the ranker's sequence store, here its embedded one under ``--data-dir``)."""
    import pandas as pd

    log = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "item_id": [10, 11, 12],
            "category_id": [5, 5, 6],
            "ts": [86400, 86401, 86402],
            "click": [1, 1, 0],
        }
    )
    write_log(log, tmp_path / "log.parquet")
    done = keep("features", str(tmp_path / "log.parquet"), "--data-dir", str(tmp_path / "ranker"))
    assert done.returncode == 0, done.stderr
    assert "3 rows, 2 clicks" in done.stdout and (tmp_path / "ranker" / "features").is_dir()
    via_module = subprocess.run(
        [
            sys.executable,
            "-m",
            "ranker.features",
            str(tmp_path / "nope.parquet"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert via_module.returncode == 2 and via_module.stderr.startswith("ranker.features: error: ")
    assert "nope.parquet" in via_module.stderr and len(via_module.stderr.strip().splitlines()) == 1


def test_gkc_addresses_are_refused_in_the_wrong_flag(tmp_path: Path) -> None:
    """``--gkc`` meant a gRPC address in train/evaluate and a REST URL in publish/versions."""
    write_log(
        pd_log(),
        tmp_path / "t.parquet",
    )
    train = keep(
        "train",
        "--train",
        str(tmp_path / "t.parquet"),
        "--out",
        str(tmp_path / "m"),
        "--gkc",
        "http://127.0.0.1:8081",
    )
    one_line_refusal(train, "--gkc takes GKC's gRPC address", "--gkc-api")
    one_line_refusal(keep("publish", str(tmp_path), "--gkc", "http://127.0.0.1:8081"), "--gkc-api URL")
    one_line_refusal(keep("versions", "list", "--gkc-api", "127.0.0.1:50051"), "REST URL")


def pd_log() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {"user_id": [1, 2], "item_id": [10, 11], "category_id": [5, 6], "ts": [86400, 86401], "click": [1, 0]}
    )


def test_data_days_cuts_a_log_by_day(tmp_path: Path) -> None:
    import pandas as pd

    log = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 11, 12, 13],
            "category_id": [5, 5, 6, 6],
            "ts": [86400 * 3, 86400 * 4, 86400 * 4 + 5, 86400 * 5],
            "click": [1, 0, 1, 0],
        }
    )
    write_log(log, tmp_path / "log.parquet")
    assert (
        keep(
            "data",
            "days",
            str(tmp_path / "log.parquet"),
            "--drop-last",
            "1",
            "--out",
            str(tmp_path / "a.parquet"),
        ).returncode
        == 0
    )
    assert (
        keep(
            "data", "days", str(tmp_path / "log.parquet"), "--last", "1", "--out", str(tmp_path / "b.parquet")
        ).returncode
        == 0
    )
    assert pd.read_parquet(tmp_path / "a.parquet")["ts"].max() < 86400 * 5
    assert pd.read_parquet(tmp_path / "b.parquet")["ts"].tolist() == [86400 * 5]
    one_line_refusal(
        keep(
            "data",
            "days",
            str(tmp_path / "log.parquet"),
            "--drop-last",
            "3",
            "--out",
            str(tmp_path / "c.parquet"),
        ),
        "--drop-last 3",
    )
