"""The Helm chart, checked with a real helm v3 binary and Kubernetes' own OpenAPI schemas."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aif.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aif-tuning"
PRODUCTION = CHART / "ci" / "production-values.yaml"
KUBERNETES_VERSION = "1.35.0"
"""A current release: podFailurePolicy, Indexed Jobs and every field used here are GA."""


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([helm, "template", "aif", str(CHART), "--namespace", "aif", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def settings_of(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings as a pod of this release gets them (secrets filled in)."""
    (config,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith(
        "-settings")]
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    (orchestrator,) = [d for d in by_kind(docs, "Deployment")
                       if d["metadata"]["name"].endswith("-orchestrator")]
    for env in orchestrator["spec"]["template"]["spec"]["containers"][0]["env"]:
        monkeypatch.setenv(env["name"], env.get("value", "from-a-secret"))
    return Settings()


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_the_chart_lints_strictly(helm: str, values: list[str]) -> None:
    done = subprocess.run([helm, "lint", "--strict", str(CHART), *values],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)],
                                    ["--set", "launcher=local", "--set-string",
                                     "extraRecipes.outage-notes=version: 1"]],
                         ids=["default", "production", "local-launcher"])
def test_every_rendered_manifest_passes_the_kubernetes_schemas(helm: str,
                                                               values: list[str]) -> None:
    docs = render(helm, *values)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no schema in Kubernetes itself
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim",
            "ServiceAccount"} <= kinds


def test_the_production_values_give_the_service_what_it_needs(
    helm: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render(helm, "-f", str(PRODUCTION))
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    orchestrator = deployments["aif-aif-tuning-orchestrator"]
    assert orchestrator["spec"]["replicas"] == 2
    pod = orchestrator["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
                   for e in pod["containers"][0]["env"] if "valueFrom" in e}
    assert secret_refs == {"AIF_DATABASE_URL": "aif-database",
                           "AIF_KAFKA__SASL_PLAIN_USERNAME": "aif-kafka-credentials",
                           "AIF_KAFKA__SASL_PLAIN_PASSWORD": "aif-kafka-credentials"}
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (ingress,) = by_kind(docs, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "tuning-factory-tls"
    (monitor,) = by_kind(docs, "ServiceMonitor")
    scraped = [s for s in by_kind(docs, "Service") if all(
        s["metadata"]["labels"].get(k) == v
        for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
    assert {p["name"] for s in scraped for p in s["spec"]["ports"]} == {"http", "metrics"}

    settings = settings_of(docs, monkeypatch)
    assert settings.launcher == "kubernetes" and settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.ssl_cafile == "/etc/aif/kafka-ca/ca.crt"
    k = settings.kubernetes
    assert (k.nodes, k.gpus_per_node, k.namespace, k.data_claim) == (
        2, 4, "aif", claim["metadata"]["name"])
    assert k.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert k.tolerations[0].key == "nvidia.com/gpu" and k.env_from_secrets == [
        "aif-s3-credentials"]
    assert settings.metrics_port == 9464 and settings.log_format == "json"


def test_the_default_values_give_valid_settings(helm: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(render(helm), monkeypatch)
    assert settings.kubernetes.image == "registry.example.eu/aif/aif-tuning:0.1.0"
    assert settings.database_url is None  # SQLite on the volume, one orchestrator


def test_the_schema_rejects_wrong_values(helm: str, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({
        "orchestrator": {"replicas": "two"}, "kafka": {"securityProtocol": "SASL_TLS"},
        "kubernetes": {"gpusPerNode": -1, "memory": "lots"}, "replica": 2}))
    done = subprocess.run([helm, "template", "aif", str(CHART), "-f", str(wrong)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    for complaint in ("Additional property replica is not allowed",
                      "orchestrator.replicas: Invalid type", "kafka.securityProtocol",
                      "kubernetes.gpusPerNode", "kubernetes.memory"):
        assert complaint in done.stderr, done.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"orchestrator": {"replicas": 2}}, "orchestrator.replicas > 1 needs PostgreSQL"),
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "needs kafka.credentialsSecret"),
])
def test_the_chart_refuses_what_the_service_cannot_run(helm: str, tmp_path: Path,
                                                       values: dict, message: str) -> None:
    file = tmp_path / "values.json"
    file.write_text(json.dumps(values))
    done = subprocess.run([helm, "template", "aif", str(CHART), "-f", str(file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr
