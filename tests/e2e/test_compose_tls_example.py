"""The compose file's TLS example works: deploy/compose/init-secrets.sh's files serve TLS.

A server runs with the certificate, key and token file the script wrote, as
docker-compose.yml wires them (TLS_CERT_FILE, TLS_KEY_FILE, AUTH_TOKENS_FILE,
health on its own plaintext port), and grpcurl calls it as the file's header
says: with the example CA and the token.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import SERVING, Launcher, free_port, grpcurl_path, health_status

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(grpcurl_path()), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_tls_example_serves_with_a_token(launch_server: Launcher, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "deploy/compose/init-secrets.sh"), str(secrets)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    health = f"127.0.0.1:{free_port()}"
    with launch_server(
        "tls-example",
        TLS_CERT_FILE=str(secrets / "tls/server.crt"),
        TLS_KEY_FILE=str(secrets / "tls/server.key"),
        AUTH_TOKENS_FILE=str(secrets / "auth_tokens"),
        HEALTH_LISTEN_ADDRESS=health,
    ) as server:
        assert health_status(health) == SERVING
        address = f"localhost:{server.port}"
        token = (secrets / "auth_tokens").read_text().strip()
        ca = str(secrets / "tls/ca.crt")
        method = "mcprouter.v1.RouterService/Stats"
        ok = grpcurl("-cacert", ca, "-H", f"authorization: Bearer {token}", address, method)
        assert ok.returncode == 0, ok.stderr
        assert "hitRate" in ok.stdout or "{" in ok.stdout
        no_token = grpcurl("-cacert", ca, address, method)
        assert "Unauthenticated" in no_token.stderr, no_token.stderr
        plaintext = grpcurl("-plaintext", address, method)
        assert plaintext.returncode != 0
