"""Grafana dashboard and Prometheus config: every metric the dashboard queries is one the services export.

The exported names come from the real services: ``keep serve gkc`` and ``keep serve ranker`` are started as
subprocesses on free ports and their ``/metrics`` scraped (metric families are declared at start-up, so no
traffic is needed to see their names).
"""

from __future__ import annotations

import json

import yaml

from tests.support.deploy_files import (
    COMPOSE_FILE,
    DASHBOARD,
    DATASOURCES,
    DEPLOY,
    PROMETHEUS,
    REPO,
    dashboard,
    dashboard_exprs,
    exported_names,
    load_compose_yaml,
    metric_names,
)


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
