"""docker-compose.yml is a production shape, in step with the settings.

No Docker engine (nor the compose plugin) exists here, so `docker compose
config` cannot run: the file is validated against the Compose Specification's
JSON schema (bundled in check-jsonschema) and its properties are checked
here. The service's environment is completed with the env file that
deploy/compose/init-secrets.sh writes, and must make valid Settings.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcprouter.server.config import Settings, describe_settings

ROOT = Path(__file__).parents[2]
STORES = ("redis-cache", "redis-state", "postgres", "clickhouse", "chroma")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/compose/init-secrets.sh writes, in a temporary folder."""
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "deploy/compose/init-secrets.sh"), str(folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


def service_env(secrets: Path) -> dict[str, str]:
    router = compose()["services"]["mcp-router"]
    env = dict(router["environment"])
    for env_file in router["env_file"]:
        assert env_file.startswith("secrets/"), env_file
        for line in (secrets / env_file.removeprefix("secrets/")).read_text().splitlines():
            name, _, value = line.partition("=")
            assert name not in env, f"{name} set twice"
            env[name] = value
    return env


def grace_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match[1])


def test_the_file_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_variable_is_a_setting_and_stores_are_configured(secrets: Path) -> None:
    env = service_env(secrets)
    known = {name for name, _, _ in describe_settings()}
    assert set(env) <= known, f"unknown settings in compose: {set(env) - known}"
    for required in (
        "REDIS_URL",
        "REDIS_STATE_URL",
        "POSTGRES_DSN",
        "CLICKHOUSE_URL",
        "CHROMA_URL",
    ):
        assert env.get(required), f"{required} must be set: compose runs no embedded servers"
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert settings.migrate_on_start
    assert settings.log_format == "json" and settings.access_log and settings.metrics_address
    assert settings.redis_url != settings.redis_state_url
    for host in ("redis-cache:", "redis-state:", "postgres:", "clickhouse:", "chroma:"):
        assert any(host in str(v) for v in env.values())


def test_a_token_and_tls_are_required_and_come_from_secrets(secrets: Path) -> None:
    data = compose()
    router = data["services"]["mcp-router"]
    env = router["environment"]
    mounted = {f"/run/secrets/{name}": name for name in router["secrets"]}
    for setting in ("AUTH_TOKENS_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"):
        assert env[setting] in mounted, f"{setting} must name a mounted secret"
        source = data["secrets"][mounted[env[setting]]]["file"]
        assert source.startswith("./secrets/"), source
        assert (secrets / source.removeprefix("./secrets/")).stat().st_size > 0
    assert "AUTH_TOKENS" not in env, "no token in the file itself"


def test_no_password_in_the_file_and_store_ports_unpublished() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    data = compose()
    for name in STORES:
        service = data["services"][name]
        assert "ports" not in service, f"{name} must not be published"
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), key
    assert not re.search(r"(?i)password\s*[:=]\s*[A-Za-z0-9]", text.replace("_FILE:", "")), (
        "a literal password"
    )
    assert not re.search(r"://[^:/@\s]+:[^@$\s]+@", text), "credentials in a URL"
    router = data["services"]["mcp-router"]
    port = router["environment"]["LISTEN_ADDRESS"].rsplit(":", 1)[1]
    metrics = router["environment"]["METRICS_ADDRESS"].rsplit(":", 1)[1]
    assert f"{port}:{port}" in router["ports"]
    assert f"127.0.0.1:{metrics}:{metrics}" in router["ports"], "metrics on the host's loopback"


def test_two_redis_roles() -> None:
    services = compose()["services"]
    cache = " ".join(services["redis-cache"]["command"])
    state = " ".join(services["redis-state"]["command"])
    assert "--maxmemory " in cache and "--maxmemory-policy allkeys-lru" in cache
    assert "--appendonly no" in cache
    assert "--maxmemory-policy noeviction" in state and "--appendonly yes" in state
    assert "redis-state-data:/data" in services["redis-state"]["volumes"]


def test_images_pinned_restart_limits_and_stop_grace() -> None:
    data = compose()
    for name, service in data["services"].items():
        image = service["image"]
        version = re.match(r"v?(\d+(?:\.\d+)*)", image.rpartition(":")[2])
        # A patch release: PostgreSQL numbers them major.minor (16.6).
        parts = 2 if image.startswith("postgres:") else 3
        assert version and version[1].count(".") + 1 >= parts, f"{name}: {image} is not pinned"
        assert service["restart"] in ("unless-stopped", "always"), name
        limits = service["deploy"]["resources"]["limits"]
        assert limits.get("memory") and limits.get("cpus"), name
        assert "healthcheck" in service, name
    router = data["services"]["mcp-router"]
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in router["environment"].items()})
    needed = settings.drain_delay_s + settings.shutdown_grace_s
    assert grace_seconds(router["stop_grace_period"]) > needed


def test_healthchecks_and_dependencies_are_consistent() -> None:
    data = compose()
    services = data["services"]
    router = services["mcp-router"]
    health_port = router["environment"]["HEALTH_LISTEN_ADDRESS"].rsplit(":", 1)[1]
    assert f"127.0.0.1:{health_port}" in router["healthcheck"]["test"]
    assert set(router["depends_on"]) == set(STORES)
    for name, condition in router["depends_on"].items():
        assert condition == {"condition": "service_healthy"}
        assert "healthcheck" in services[name], f"{name} needs a healthcheck"
    declared = set(data["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":", 1)[0] in declared
        for secret in service.get("secrets", []):
            assert secret in data["secrets"]


def test_secrets_stay_out_of_git_and_of_the_image() -> None:
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()
