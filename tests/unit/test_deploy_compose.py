"""docker-compose.yml (+ the Redis Cluster override): valid per the compose specification, ordered by health,
no literal secrets. Validated by the real Docker Compose v2 binary (``docker compose config``: interpolation,
merge, schema), which needs no Docker daemon; the assertions then read its normalised JSON model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_files import (
    CLUSTER_FILE,
    COMPOSE_FILE,
    COMPOSE_SECRETS,
    REPO,
    compose_config,
    load_compose_yaml,
)

SERVICES = {"redis", "gkc", "trainer", "ranker", "prometheus", "grafana"}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|CREDENTIAL", re.IGNORECASE)


def model(*files: Path) -> dict[str, Any]:
    proc = compose_config(*files)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture(scope="module")
def main_model() -> dict[str, Any]:
    return model(COMPOSE_FILE)


@pytest.fixture(scope="module")
def cluster_model() -> dict[str, Any]:
    return model(COMPOSE_FILE, CLUSTER_FILE)


def dependencies(services: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, depends on, condition) for every edge."""
    return [
        (name, dep, spec["condition"])
        for name, svc in services.items()
        for dep, spec in (svc.get("depends_on") or {}).items()
    ]


def check_ordering(services: dict[str, Any]) -> None:
    for name, dep, condition in dependencies(services):
        assert dep in services, f"{name} depends on undefined {dep}"
        if condition == "service_healthy":
            test = services[dep].get("healthcheck", {}).get("test")
            assert test and test[0] != "NONE", (
                f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
            )
        elif condition == "service_completed_successfully":
            assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot job and must not restart"
        else:
            pytest.fail(f"{name} → {dep}: condition {condition} does not wait for health or completion")


def test_compose_file_is_valid_and_has_the_suite(main_model: dict[str, Any]) -> None:
    assert set(main_model["services"]) == SERVICES


def test_validator_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The check can fail: an unknown key is refused by the compose schema."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  gkc:\n    image: keep-gkc:dev\n    helthcheck:\n      test: [CMD, 'true']\n")
    proc = compose_config(bad)
    assert proc.returncode != 0
    assert "helthcheck" in proc.stderr


def test_ordering_waits_for_health_and_completion(main_model: dict[str, Any]) -> None:
    services = main_model["services"]
    check_ordering(services)
    edges = set(dependencies(services))
    assert ("gkc", "redis", "service_healthy") in edges
    assert ("trainer", "gkc", "service_healthy") in edges
    assert ("ranker", "gkc", "service_healthy") in edges
    assert ("ranker", "trainer", "service_completed_successfully") in edges


def test_every_long_running_service_has_a_healthcheck(main_model: dict[str, Any]) -> None:
    for name, svc in main_model["services"].items():
        if svc.get("restart", "no") != "no":
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_redis_persists_to_a_volume(main_model: dict[str, Any]) -> None:
    redis = main_model["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])


def test_services_are_wired_to_each_other(main_model: dict[str, Any]) -> None:
    services = main_model["services"]
    gkc = services["gkc"]["environment"]
    assert gkc["GKC_REDIS_URL"] == "redis://redis:6379/0"
    assert services["ranker"]["environment"]["RANKER_GKC_ADDR"] == f"gkc:{gkc['GKC_GRPC_PORT']}"
    trainer = services["trainer"]["environment"]
    assert trainer["KEEP_GKC_URL"] == f"http://gkc:{gkc['GKC_HTTP_PORT']}"
    assert trainer["KEEP_GKC_ADDR"] == f"gkc:{gkc['GKC_GRPC_PORT']}"
    # The trainer writes the model the ranker reads, through one named volume.
    models = {v["source"] for v in services["trainer"]["volumes"] if v["target"] == "/models"}
    ranker_models = [v for v in services["ranker"]["volumes"] if v["target"] == "/models"]
    assert models and {v["source"] for v in ranker_models} == models
    assert all(v.get("read_only") for v in ranker_models)
    assert services["ranker"]["environment"]["RANKER_MODEL_DIR"].startswith("/models/")
    # The behaviour-sequence store: a database of its own on the Redis, not GKC's knowledge database, and
    # the same one for the ranker (reads, events) and the trainer's job (backfill).
    store = services["ranker"]["environment"]["RANKER_FEATURES_REDIS_URL"]
    assert store.startswith("redis://redis:") and store != gkc["GKC_REDIS_URL"]
    assert trainer["RANKER_FEATURES_REDIS_URL"] == store
    assert services["ranker"]["environment"]["RANKER_EVENTS_TOKEN"] == COMPOSE_SECRETS["RANKER_EVENTS_TOKEN"]


def test_mounted_config_files_and_dockerfiles_exist(main_model: dict[str, Any]) -> None:
    for name, svc in main_model["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name} mounts missing {vol['source']}"
        if "build" in svc:
            assert (Path(svc["build"]["context"]) / svc["build"]["dockerfile"]).is_file(), name


def test_no_secret_is_hard_coded() -> None:
    """Every secret-looking value in the files is an env reference that refuses to start when unset."""
    for path in (COMPOSE_FILE, CLUSTER_FILE):
        raw = load_compose_yaml(path)
        for name, svc in raw["services"].items():
            env = svc.get("environment") or {}
            items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
            for key, value in items:
                if SECRET_NAME.search(key):
                    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{path.name}:{name}:{key}"


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
    proc = compose_config(COMPOSE_FILE, env=env)
    assert proc.returncode != 0
    assert missing in proc.stderr


def test_cluster_override_runs_gkc_on_three_masters(cluster_model: dict[str, Any]) -> None:
    services = cluster_model["services"]
    check_ordering(services)
    nodes = sorted(n for n in services if re.fullmatch(r"redis-node-\d", n))
    assert len(nodes) == 3
    init = services["redis-cluster-init"]
    assert {dep for dep, spec in init["depends_on"].items() if spec["condition"] == "service_healthy"} == set(
        nodes
    )
    assert "--cluster-replicas 0" in " ".join(init["command"])
    for node in nodes:
        command = services[node]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
    gkc = services["gkc"]
    assert set(gkc["depends_on"]) == {"redis-cluster-init"}, "gkc must not wait on the single redis any more"
    assert gkc["environment"]["GKC_REDIS_URL"].startswith("redis://redis-node-1:")
    assert gkc["environment"]["GKC_REDIS_CLUSTER"] == "true"


def test_prometheus_and_grafana_get_their_provisioning(main_model: dict[str, Any]) -> None:
    services = main_model["services"]
    prom_mounts = {
        v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"] if v["type"] == "bind"
    }
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == REPO / "deploy" / "prometheus" / "prometheus.yml"
    graf_mounts = {
        v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"] if v["type"] == "bind"
    }
    assert graf_mounts["/etc/grafana/provisioning"] == REPO / "deploy" / "grafana" / "provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dash_target = "/etc/grafana/dashboards"
    assert home.startswith(dash_target + "/")
    assert (graf_mounts[dash_target] / Path(home).name).is_file()


def _env_names(prefix: str) -> set[str]:
    names: set[str] = set()
    for path in (COMPOSE_FILE, CLUSTER_FILE):
        for svc in load_compose_yaml(path)["services"].values():
            names |= {k for k in (svc.get("environment") or {}) if k.startswith(prefix)}
    for doc in yaml.safe_load_all((REPO / "deploy" / "k8s" / "10-config.yaml").read_text()):
        names |= {k for k in doc.get("data", {}) if k.startswith(prefix)}
    return names


def test_ranker_variables_are_real_settings() -> None:
    from ranker.settings import RankerSettings

    fields = {f"RANKER_{name.upper()}" for name in RankerSettings.model_fields}
    names = _env_names("RANKER_")
    assert names and names <= fields, names - fields


def test_gkc_variables_are_real_settings() -> None:
    """A misspelt GKC_* variable would be ignored silently (extra="ignore"): check against GkcSettings."""
    from gkc.settings import GkcSettings

    fields = {f"GKC_{name.upper()}" for name in GkcSettings.model_fields}
    names = _env_names("GKC_")
    assert names and names <= fields, names - fields
