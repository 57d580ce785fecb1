"""Grafana dashboard and Prometheus config: every metric the dashboard queries is one the services export.

The exported names come from the real services: ``keep serve gkc`` and ``keep serve ranker`` are started as
subprocesses on free ports and their ``/metrics`` scraped (metric families are declared at start-up, so no
traffic is needed to see their names).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from deploy_files import COMPOSE_FILE, DEPLOY, REPO, load_compose_yaml

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


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, method) "
        '(rate(a_seconds_bucket{method="BatchGet", le!="1"}[5m])))'
        " / clamp_min(sum(rate(b_total[$__rate_interval])), 1e-9) + on (job) group_left c_info"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c_info"}


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    text = json.dumps(dash).lower()
    for topic in ("latency", "error", "degraded", "cache hit", "versions", "breaker"):
        assert topic in text, f"the dashboard has no {topic} panel"
    assert any("0.99" in e for e in dashboard_exprs()) and any("0.5," in e for e in dashboard_exprs())


def test_prometheus_scrapes_both_services_where_compose_serves_them() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose = load_compose_yaml(COMPOSE_FILE)["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port_var in (("gkc", "GKC_HTTP_PORT"), ("ranker", "RANKER_HTTP_PORT")):
        targets = [t for sc in jobs[service]["static_configs"] for t in sc["targets"]]
        assert targets == [f"{service}:{compose[service]['environment'][port_var]}"]
        assert jobs[service].get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning_points_at_the_dashboards_mount() -> None:
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "keep.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    grafana = load_compose_yaml(COMPOSE_FILE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (REPO / mounts[path]).resolve() == DASHBOARD.parent.resolve()


def test_exported_names_include_families_without_samples() -> None:
    """A labelled metric nobody has observed yet still shows its name (HELP/TYPE lines)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    Histogram("x_seconds", "latency", ["method"], registry=registry)
    Counter("y", "events", ["result"], registry=registry)
    Gauge("z", "level", registry=registry).set(3)
    names = exported_names(generate_latest(registry).decode())
    assert {"x_seconds_bucket", "x_seconds_count", "x_seconds_sum", "y_total", "z"} <= names
    assert "y" not in names and "x_seconds" not in names
