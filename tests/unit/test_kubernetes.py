"""deploy/kubernetes: valid against the Kubernetes API schemas and in step with the server.

No cluster exists here. ``kubernetes-validate`` (PyPI) bundles the API's JSON
schemas per Kubernetes version and validates offline; strict mode rejects
unknown fields, so a misspelt ``readinesProbe`` fails. Versions checked: the
oldest with native gRPC probes GA (1.27 is where they became GA; 1.29 is the
oldest still commonly supported) and the newest the package knows.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mcprouter.server.config import Settings, describe_settings

ROOT = Path(__file__).parents[2]
FOLDER = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
BACKENDS = {"redis", "redis_state", "postgres", "clickhouse", "chroma"}


def resources() -> dict[str, dict[str, Any]]:
    """Every resource the kustomization lists, by kind."""
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((FOLDER / name).read_text()):
            key = doc["kind"] if doc["kind"] != "Service" else doc["metadata"]["name"]
            found[key] = doc
    return found


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    for kind, resource in resources().items():
        validated = kubernetes_validate.validate(resource, version, strict=True)
        assert validated, kind
        print(f"{kind} ({resource['apiVersion']}) valid against Kubernetes {validated}")


def test_the_validator_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(resources()["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def settings_of(found: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = dict(found["ConfigMap"]["data"])
    secret = {k: v for k, v in found["Secret"]["stringData"].items() if k.isupper()}
    assert not set(env) & set(secret)
    return env | secret


def test_config_and_secret_are_settings() -> None:
    found = resources()
    env = settings_of(found)
    known = {name for name, _, _ in describe_settings()}
    assert set(env) <= known, set(env) - known
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert settings.tls_cert_file and settings.auth_tokens_file, "TLS and a token are required"
    assert settings.log_format == "json" and settings.metrics_address
    for url in ("redis_url", "redis_state_url", "postgres_dsn", "clickhouse_url", "chroma_url"):
        assert getattr(settings, url), f"{url}: a pod runs no embedded server"
    for key, value in found["Secret"]["stringData"].items():
        assert "CHANGE-ME" in value, f"{key}: only placeholders are committed"


def container(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_probes_are_native_grpc_on_the_health_port() -> None:
    found = resources()
    env = settings_of(found)
    ports = {p["name"]: p["containerPort"] for p in container(found)["ports"]}
    health_port = int(env["HEALTH_LISTEN_ADDRESS"].rsplit(":", 1)[1])
    assert ports["health"] == health_port
    assert ports["grpc"] == int(env["LISTEN_ADDRESS"].rsplit(":", 1)[1])
    assert ports["metrics"] == int(env["METRICS_ADDRESS"].rsplit(":", 1)[1])
    probes = {
        name: container(found)[f"{name}Probe"] for name in ("startup", "readiness", "liveness")
    }
    for probe in probes.values():
        assert probe["grpc"]["port"] == health_port
    assert probes["readiness"]["grpc"]["service"] == "", "readiness on overall health"
    # Liveness must not follow a store: never a backend's health name.
    assert probes["liveness"]["grpc"]["service"] not in BACKENDS


def test_termination_grace_covers_prestop_drain_and_grace() -> None:
    found = resources()
    env = settings_of(found)
    spec = found["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container(found).get("lifecycle", {}).get("preStop", {})
    slept = float(pre_stop.get("sleep", {}).get("seconds", 0))
    assert "exec" not in pre_stop, "the image has no shell tools to sleep with"
    drain = float(env["DRAIN_DELAY_S"]) + float(env["SHUTDOWN_GRACE_S"])
    assert spec["terminationGracePeriodSeconds"] > slept + drain
    liveness = container(found)["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= drain


def test_services_pdb_and_hpa_select_the_deployment() -> None:
    found = resources()
    deployment = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("mcp-router", "mcp-router-headless"):
        assert found[name]["spec"]["selector"].items() <= labels.items()
    assert found["mcp-router-headless"]["spec"]["clusterIP"] == "None"
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert found["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2, "the PDB needs spares"
    image = container(found)["image"]
    assert image.rpartition(":")[2][:1].isdigit(), f"{image} is not pinned to a version"
