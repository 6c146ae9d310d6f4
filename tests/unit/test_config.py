"""Settings come from the environment, are validated, and are documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mcprouter.server.cli import main
from mcprouter.server.config import Settings, describe_settings

REQUIRED = {"REDIS_URL", "REDIS_POOL_SIZE", "POSTGRES_DSN", "CLICKHOUSE_URL", "CHROMA_URL"}


def test_defaults_select_the_embedded_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _, _ in describe_settings():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.redis_url is None
    assert settings.postgres_dsn is None
    assert settings.listen_address.endswith(":50051")
    assert settings.ttl_experiment_s == 86_400


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/3")
    monkeypatch.setenv("KEY_NAMESPACE", "prod:")
    monkeypatch.setenv("TTL_ANALYTICS_S", "60")
    settings = Settings(_env_file=None)
    assert (settings.redis_url, settings.key_namespace, settings.ttl_analytics_s) == (
        "redis://r:6379/3",
        "prod:",
        60,
    )


@pytest.mark.parametrize(
    ("name", "value"), [("KEY_NAMESPACE", "prod"), ("REDIS_POOL_SIZE", "0"), ("LOG_LEVEL", "x")]
)
def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_the_pending_dedup_ttl_must_outlast_an_insert(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_INSERT_TIMEOUT_S", "86")  # 86 + 0.015 + 5 > 90
    with pytest.raises(ValidationError, match="DEDUP_PENDING_TTL_S"):
        Settings(_env_file=None)
    monkeypatch.setenv("DEDUP_PENDING_TTL_S", "92")
    assert Settings(_env_file=None).dedup_pending_ttl_s == 92


def test_every_setting_is_documented_in_help_and_readme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {name for name, _, _ in describe_settings()}
    assert names >= REQUIRED | {"LISTEN_ADDRESS", "KEY_NAMESPACE", "TTL_EXPERIMENT_S"}
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, default, _ in describe_settings():
        assert name in help_text
        assert f"`{name}`" in readme, f"README configuration table lacks {name}"
        assert default in readme or default.startswith("(")
