"""The Go client (clients/go) built offline from Debian's Go sources.

No Go module proxy is reachable, so the client is built in GOPATH mode
(``GO111MODULE=off``) with ``GOPATH=<tmp>:/usr/share/gocode``, where Debian's
``golang-google-grpc-dev``, ``golang-google-protobuf-dev``,
``golang-github-golang-protobuf-1-5-dev`` and ``golang-google-genproto-dev``
keep their sources; ``<tmp>/src/mcprouter`` is a symlink to clients/go (the
module path of clients/go/go.mod). ``go test`` reproduces the assignment
vectors; the quickstart program then drives the shared e2e server and checks
the server's assignments against the local algorithm, STORED then DUPLICATE,
an ErrorInfo reason and Stats. Skipped, with the apt-get line, when the
toolchain or the sources are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "go"
DEBIAN_GOCODE = Path("/usr/share/gocode")
APT_LINE = (
    "apt-get install -y --no-install-recommends golang-go golang-google-grpc-dev "
    "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"
)
GO_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def gopath(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The package folder inside a GOPATH, and the environment to build there."""
    go = shutil.which("go")
    grpc_src = DEBIAN_GOCODE / "src" / "google.golang.org" / "grpc"
    golang_protobuf = DEBIAN_GOCODE / "src" / "github.com" / "golang" / "protobuf"
    if go is None or not grpc_src.is_dir():
        pytest.skip(f"Go toolchain or Debian Go sources missing: {APT_LINE}")
    if not (golang_protobuf / "proto" / "registry.go").is_file():
        # grpc 1.33 marshals through github.com/golang/protobuf; its 1.3
        # version (no proto/registry.go) cannot marshal APIv2 messages.
        pytest.skip(f"github.com/golang/protobuf 1.3 installed, 1.5 needed: {APT_LINE}")
    root = tmp_path_factory.mktemp("gopath")
    (root / "src").mkdir()
    package = root / "src" / "mcprouter"
    package.symlink_to(CLIENT_DIR, target_is_directory=True)
    env = os.environ | {
        "GO111MODULE": "off",
        "GOPATH": f"{root}{os.pathsep}{DEBIAN_GOCODE}",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "MCPROUTER_SPEC_DIR": str(REPO / "spec"),
    }
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    return package, env


def go(package: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["go", *args],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_go_client_reproduces_assignment_vectors(gopath: tuple[Path, dict[str, str]]) -> None:
    package, env = gopath
    result = go(package, env, "test", "-count=1", "-v", "./...")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--- PASS: TestVectorsBucketAndVariant" in output, output
    assert "--- PASS: TestVectorsChooseVariant" in output, output


def test_go_client_against_live_server(
    gopath: tuple[Path, dict[str, str]], server_target: str, tmp_path: Path
) -> None:
    package, env = gopath
    binary = tmp_path / "quickstart"
    built = go(package, env, "build", "-o", str(binary), "./cmd/quickstart")
    assert built.returncode == 0, built.stdout + built.stderr
    result = subprocess.run(
        [str(binary), "-target", server_target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SERVE_STATUS_DUPLICATE" in output, output
    assert output.rstrip().endswith("OK"), output
