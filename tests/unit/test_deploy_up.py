"""``deploy/up.py`` (``make up``) gives its processes the same variables as docker-compose.yml, wired the
same way, and keeps its generated token private."""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

import pytest

from services.settings import is_placeholder
from tests.support.deploy_files import COMPOSE_FILE, load_compose_yaml, load_up

up = load_up()


def args_for(work_dir: Path, *argv: str) -> argparse.Namespace:
    args = up.build_parser().parse_args(["--work-dir", str(work_dir), *argv])
    args.work_dir = args.work_dir.resolve()
    return args


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("GKC_", "RANKER_", "KEEP_")):
            monkeypatch.delenv(key)


def port_of(address: str) -> str:
    return address.rsplit(":", 1)[1].split("/")[0]


@pytest.mark.usefixtures("clean_env")
def test_local_processes_get_the_compose_variables(tmp_path: Path) -> None:
    env = up.plan_env(args_for(tmp_path, "--free-ports"), [6399])
    compose = load_compose_yaml(COMPOSE_FILE)["services"]
    for service in ("gkc", "ranker", "trainer"):
        names = {k for k in compose[service]["environment"] if not k.endswith("_LOG_JSON")}
        assert names <= set(env), f"{service}: {sorted(names - set(env))} not set by make up"
    assert port_of(env["RANKER_GKC_ADDR"]) == env["GKC_GRPC_PORT"]
    assert port_of(env["KEEP_GKC_ADDR"]) == env["GKC_GRPC_PORT"]
    assert port_of(env["KEEP_GKC_URL"]) == env["GKC_HTTP_PORT"]
    assert env["RANKER_MODEL_DIR"] == str(Path(env["KEEP_MODELS_DIR"]) / "current")
    assert env["GKC_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert env["RANKER_FEATURES_REDIS_URL"] == "redis://127.0.0.1:6399/1", "its own database, not GKC's"
    assert env["RANKER_EVENTS_TOKEN"], "event ingest is open to the suite's token"
    assert "GKC_REDIS_CLUSTER" not in env
    ports = [env[k] for k in ("GKC_GRPC_PORT", "GKC_HTTP_PORT", "RANKER_GRPC_PORT", "RANKER_HTTP_PORT")]
    assert len(set(ports)) == 4


@pytest.mark.usefixtures("clean_env")
def test_default_ports_are_the_design_ones(tmp_path: Path) -> None:
    args = args_for(tmp_path)
    env = up.plan_env(args, up.redis_ports(args))
    assert [env["GKC_GRPC_PORT"], env["GKC_HTTP_PORT"]] == ["50051", "8081"]
    assert [env["RANKER_GRPC_PORT"], env["RANKER_HTTP_PORT"]] == ["50052", "8082"]
    assert env["GKC_REDIS_URL"] == "redis://127.0.0.1:6390/0", "never the machine's own Redis at 6379"


@pytest.mark.usefixtures("clean_env")
def test_generated_token_is_private_stable_and_real(tmp_path: Path) -> None:
    env = up.plan_env(args_for(tmp_path), [6390])
    token_file = tmp_path / "gkc-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{48}", env["GKC_API_TOKEN"])
    from pydantic import SecretStr

    assert not is_placeholder(SecretStr(env["GKC_API_TOKEN"]))
    assert up.plan_env(args_for(tmp_path), [6390])["GKC_API_TOKEN"] == env["GKC_API_TOKEN"]


def test_callers_token_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GKC_API_TOKEN", "callers-own-token-0123456789")
    assert up.plan_env(args_for(tmp_path), [6390])["GKC_API_TOKEN"] == "callers-own-token-0123456789"
    assert not (tmp_path / "gkc-token").exists()


def test_down_without_a_running_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert up.main(["--work-dir", str(tmp_path), "--down"]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_down_clears_a_stale_pid_file(tmp_path: Path) -> None:
    (tmp_path / "up.pid").write_text("999999999")
    assert up.main(["--work-dir", str(tmp_path), "--down"]) == 0
    assert not (tmp_path / "up.pid").exists()


@pytest.mark.usefixtures("clean_env")
def test_cluster_mode_sets_the_cluster_setting(tmp_path: Path) -> None:
    args = args_for(tmp_path, "--cluster")
    ports = up.redis_ports(args)
    assert ports == [6390, 6391, 6392]
    env = up.plan_env(args, ports)
    assert env["GKC_REDIS_CLUSTER"] == "true"
    assert env["GKC_REDIS_URL"] == "redis://127.0.0.1:6390/0"


def test_free_ports_never_put_a_node_or_a_service_on_a_cluster_bus_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--free-ports --cluster`` picked each node's port alone, so a node could land on another node's
    bus port (port + 10000) and die with ``Address already in use`` (seen in CI: nodes on 41563 and
    51563). The kernel's picks are replayed here with exactly that collision and a repeat."""
    picks = iter([41563, 51563, 41563, 23456, 24567, 51563, 24567, 30001, 30002, 30003, 30004, 30005])
    monkeypatch.setattr(up, "free_port", lambda: next(picks))
    bound: list[int] = []
    real_socket = up.socket.socket

    class Probe:  # the bus-port probe: every port is free for it
        def __init__(self, *a: object) -> None:
            pass

        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *a: object) -> None:
            pass

        def bind(self, addr: tuple[str, int]) -> None:
            bound.append(addr[1])

    monkeypatch.setattr(up.socket, "socket", Probe)
    args = up.build_parser().parse_args(["--work-dir", "/tmp/x", "--free-ports", "--cluster"])
    ports = up.redis_ports(args)
    monkeypatch.setattr(up.socket, "socket", real_socket)
    assert ports == [41563, 23456, 24567]
    env = up.plan_env(args, ports)
    services = [
        int(env[k]) for k in ("GKC_GRPC_PORT", "GKC_HTTP_PORT", "RANKER_GRPC_PORT", "RANKER_HTTP_PORT")
    ]
    busy = set(ports) | {p + 10000 for p in ports}
    assert not busy & set(services) and len(set(services)) == 4
