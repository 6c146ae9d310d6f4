"""Building clients/go offline: GOPATH mode against Debian's Go sources.

No Go module proxy is reachable, so the client is built with
``GO111MODULE=off`` and ``GOPATH=<tmp>:/usr/share/gocode``, where Debian's
``golang-google-grpc-dev``, ``golang-google-protobuf-dev``,
``golang-github-golang-protobuf-1-5-dev`` and ``golang-google-genproto-dev``
keep their sources; ``<tmp>/src/<module path>`` is a symlink to clients/go,
so imports resolve exactly as in module mode. Missing pieces skip, naming
``make test`` and the apt-get line; under ``make test`` they fail (``tests/toolchains.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.toolchains import missing

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "go"
MODULE_PATH = "github.com/mcprouter/mcp-router/clients/go"
DEBIAN_GOCODE = Path("/usr/share/gocode")
APT_LINE = (
    "apt-get install -y --no-install-recommends golang-go golang-google-grpc-dev "
    "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"
)
GO_TIMEOUT_S = 400


def module_path() -> str:
    """The module path declared in clients/go/go.mod."""
    for line in (CLIENT_DIR / "go.mod").read_text().splitlines():
        if line.startswith("module "):
            return line.split()[1]
    raise AssertionError("clients/go/go.mod declares no module")


def gopath(root: Path) -> tuple[Path, dict[str, str]]:
    """The package folder inside a GOPATH under ``root``, and the environment to build there."""
    go = shutil.which("go")
    grpc_src = DEBIAN_GOCODE / "src" / "google.golang.org" / "grpc"
    golang_protobuf = DEBIAN_GOCODE / "src" / "github.com" / "golang" / "protobuf"
    if go is None or not grpc_src.is_dir():
        missing("Go toolchain or Debian Go sources missing", f"make go-deps, i.e. {APT_LINE}")
    if not (golang_protobuf / "proto" / "registry.go").is_file():
        # grpc 1.33 marshals through github.com/golang/protobuf; its 1.3
        # version (no proto/registry.go) cannot marshal APIv2 messages.
        missing("github.com/golang/protobuf 1.3 installed, 1.5 needed", f"make go-deps: {APT_LINE}")
    package = root / "src" / module_path()
    package.parent.mkdir(parents=True)
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
    """Run ``go args...`` in the package folder."""
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
