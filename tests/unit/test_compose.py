"""docker-compose.yml stays in step with the settings (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mcprouter.server.config import Settings, describe_settings

ROOT = Path(__file__).parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_service_variable_is_a_setting_and_stores_are_configured() -> None:
    env = compose()["services"]["mcp-router"]["environment"]
    known = {name for name, _, _ in describe_settings()}
    assert set(env) <= known, f"unknown settings in compose: {set(env) - known}"
    for required in ("REDIS_URL", "POSTGRES_DSN", "CLICKHOUSE_URL", "CHROMA_URL"):
        assert env.get(required), f"{required} must be set: compose runs no embedded servers"
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert settings.migrate_on_start


def test_ports_healthchecks_and_dependencies_are_consistent() -> None:
    services = compose()["services"]
    router = services["mcp-router"]
    port = router["environment"]["LISTEN_ADDRESS"].rsplit(":", 1)[1]
    assert f"{port}:{port}" in router["ports"]
    assert f"127.0.0.1:{port}" in router["healthcheck"]["test"]
    for name, condition in router["depends_on"].items():
        assert condition == {"condition": "service_healthy"}
        assert "healthcheck" in services[name], f"{name} needs a healthcheck"
    assert "--appendonly" in services["redis"]["command"]
    declared = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":", 1)[0] in declared
    for host in ("redis:", "postgres:", "clickhouse:", "chroma:"):
        assert any(host in str(v) for v in router["environment"].values())
