"""deploy/k8s/: every manifest validates (strict) against the Kubernetes OpenAPI schema shipped in
``kubernetes-validate``, and the pieces are wired to each other (probes → ports, HPA → Deployment, Service →
pod labels, ConfigMap/Secret/PVC references resolve, no literal secrets, same settings as compose).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_files import COMPOSE_FILE, K8S

#: A version kubernetes-validate ships schemas for, with gRPC probes (GA 1.27) and CronJob.timeZone (GA 1.27).
K8S_VERSION = "1.31.0"


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


DOCS = documents()


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        spec: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return dict(doc["spec"]["template"]["spec"])


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] in {"Deployment", "StatefulSet", "Job", "CronJob"}]


@pytest.mark.parametrize(
    "index", range(len(DOCS)), ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in DOCS]
)
def test_manifest_validates_strictly(index: int) -> None:
    kubernetes_validate.validate(DOCS[index][1], K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    """The check can fail: a typo'd probe field and a string replica count are refused."""
    bad = copy.deepcopy(find("Deployment", "gkc"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(find("Deployment", "ranker"))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_everything_is_namespaced_in_keep() -> None:
    for _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "keep", f"{doc['kind']}/{doc['metadata']['name']}"
    assert find("Namespace", "keep")


@pytest.mark.parametrize("name", ["gkc", "ranker"])
def test_service_deployment_probes_resources_service_and_hpa(name: str) -> None:
    deploy = find("Deployment", name)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"grpc", "http"}
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container[probe_name]
        if "grpc" in probe:
            assert probe["grpc"]["port"] == ports["grpc"], probe_name
        else:
            assert probe["httpGet"]["path"] == "/healthz", probe_name
            assert probe["httpGet"]["port"] in ("http", ports["http"]), probe_name
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    service = find("Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports) | set(ports.values())

    hpa = find("HorizontalPodAutoscaler", name)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", name)
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert "prometheus.io/scrape" in deploy["spec"]["template"]["metadata"]["annotations"]


def test_redis_cluster_statefulset_headless_service_and_init_job() -> None:
    sts = find("StatefulSet", "redis-cluster")
    assert sts["spec"]["replicas"] == 3
    headless = find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    args = " ".join(sts["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--cluster-enabled yes" in args and "--appendonly yes" in args
    assert sts["spec"]["volumeClaimTemplates"], "each node keeps its data and nodes.conf"
    init = " ".join(find("Job", "redis-cluster-init")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--cluster create" in init and "cluster_state:ok" in init, "forms the cluster once, idempotently"


def test_cronjob_publishes_daily_into_the_models_volume() -> None:
    cron = find("CronJob", "knowledge-daily")
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    assert spec["containers"][0]["image"].startswith("keep-trainer:")
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
    }
    ranker_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(find("Deployment", "ranker"))["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == ranker_claims, "the job writes the models the ranker reads"


def test_references_resolve_and_no_secret_is_committed() -> None:
    assert not [d for _, d in DOCS if d["kind"] == "Secret"], "secrets are created out of band, not committed"
    for doc in workloads():
        spec = pod_spec(doc)
        for container in spec["containers"]:
            for src in container.get("envFrom", []):
                find("ConfigMap", src["configMapRef"]["name"])
            for env in container.get("env", []):
                if "value" in env:
                    assert not re.search(r"TOKEN|PASSWORD|SECRET", env["name"]), env["name"]
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) == ("keep-secrets", env["name"])
        for vol in spec.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                find("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    config = find("ConfigMap", "keep-config")["data"]
    assert not [k for k in config if re.search(r"TOKEN|PASSWORD|SECRET", k)]


def test_configmap_uses_the_same_settings_as_compose() -> None:
    """A setting name in k8s that compose does not know is a typo the service would silently ignore."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    compose_env = {k for svc in compose["services"].values() for k in (svc.get("environment") or {})}
    compose_env.add("GKC_REDIS_CLUSTER")  # set by the cluster override
    config = find("ConfigMap", "keep-config")["data"]
    assert set(config) <= compose_env, set(config) - compose_env


def test_ranker_and_job_share_a_sequence_store_of_its_own() -> None:
    """The behaviour-sequence store is a standalone Redis (the store's client is not cluster-aware), never
    the knowledge cluster; the rankers and the backfilling CronJob read its URL from the one ConfigMap, and
    the event-ingest token comes from the Secret."""
    config = find("ConfigMap", "keep-config")["data"]
    url = config["RANKER_FEATURES_REDIS_URL"]
    host = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert host, url
    assert "redis-cluster" not in host.group(1), "the sequence store must not be the knowledge cluster"
    sts = find("StatefulSet", "redis-features")
    assert sts["spec"]["replicas"] == 1
    service = find("Service", sts["spec"]["serviceName"])
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert host.group(1) in {
        f"{sts['metadata']['name']}-0.{service['metadata']['name']}.keep.svc.cluster.local",
        f"{service['metadata']['name']}.keep.svc.cluster.local",
    }
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert int(host.group(2)) in {p["containerPort"] for p in container["ports"]}
    assert "--appendonly" in container["args"], "a restart keeps the users' clicks"
    assert sts["spec"]["volumeClaimTemplates"]
    for workload in (find("Deployment", "ranker"), find("CronJob", "knowledge-daily")):
        (c,) = pod_spec(workload)["containers"]
        assert {"configMapRef": {"name": "keep-config"}} in c["envFrom"], workload["metadata"]["name"]
        assert not [e for e in c.get("env", []) if e["name"] == "RANKER_FEATURES_REDIS_URL"]
    (ranker,) = pod_spec(find("Deployment", "ranker"))["containers"]
    events = [e for e in ranker["env"] if e["name"] == "RANKER_EVENTS_TOKEN"]
    assert events and events[0]["valueFrom"]["secretKeyRef"]["name"] == "keep-secrets"
