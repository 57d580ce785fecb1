"""RANKER_* settings: the documented defaults, env parsing, and refusals of settings that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranker.settings import RankerSettings
from services.errors import InvalidArgument


def test_defaults_are_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "RANKER_GRPC_PORT",
        "RANKER_HTTP_PORT",
        "RANKER_HOST",
        "RANKER_GKC_ADDR",
        "RANKER_MAX_CANDIDATES",
    ):
        monkeypatch.delenv(key, raising=False)
    s = RankerSettings()
    assert (s.grpc_port, s.http_port, s.host, s.gkc_addr) == (50052, 8082, "127.0.0.1", "127.0.0.1:50051")
    assert s.max_candidates == 1000
    s.check()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RANKER_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("RANKER_GKC_TIMEOUT_S", "0.01")
    monkeypatch.setenv("RANKER_ADMIN_TOKEN", "a-real-admin-token")
    s = RankerSettings()
    assert s.model_dir == tmp_path and s.gkc_timeout_s == 0.01
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "a-real-admin-token"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_candidates", 0, "RANKER_MAX_CANDIDATES"),
        ("gkc_timeout_s", 0, "RANKER_GKC_TIMEOUT_S"),
        ("model_reserve_s", 1.0, "RANKER_MODEL_RESERVE_S"),
        ("breaker_failures", 0, "RANKER_BREAKER_FAILURES"),
        ("torch_threads", 0, "RANKER_TORCH_THREADS"),
        ("gkc_ca_file", "/nonexistent/ca.pem", "RANKER_GKC_CA_FILE"),
    ],
)
def test_check_refuses_unworkable_settings(field: str, value: float | str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        RankerSettings.model_validate({field: value}).check()


def test_serve_workers_flag_sets_model_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli import build_parser
    from trainer.commands.serve import _workers

    def settings(*argv: str) -> RankerSettings:
        return RankerSettings(**_workers(build_parser().parse_args(["serve", "ranker", *argv])))

    monkeypatch.delenv("RANKER_MODEL_WORKERS", raising=False)
    monkeypatch.setenv("RANKER_MODEL_WORKERS", "5")
    assert settings().workers() == 5
    assert settings("--workers", "3").workers() == 3
    with pytest.raises(InvalidArgument, match="--workers"):
        settings("--workers", "0")
