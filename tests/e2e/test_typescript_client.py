"""The TypeScript/Node client (clients/typescript) against the shared e2e server.

Runs ``npm test`` there with ``MCPROUTER_TARGET`` set: the offline assignment
vectors and the live-server suite (upsert + get an experiment, the server's
assignment against the local algorithm, an event STORED then DUPLICATE,
GetCached/Invalidate, rich errors, Stats). Node's TAP summary is parsed so a
run where the live tests were silently skipped fails here. Node packages are
installed with ``npm ci`` (from the committed package-lock.json) when
``node_modules`` is missing or older than the lock file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.toolchains import missing

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NPM_CI_TIMEOUT_S = 300
NPM_TEST_TIMEOUT_S = 180
# 4 offline assignment tests + 2 offline retry tests + 9 live tests (test/*.test.ts).
MIN_PASSED = 15


def npm() -> str:
    """The npm executable; skip (fail under ``make test``) when Node.js is not installed."""
    path = shutil.which("npm")
    if path is None or shutil.which("node") is None:
        missing("Node.js/npm not installed", "apt-get install -y nodejs npm")
    return path


def ensure_node_modules(npm_path: str) -> None:
    """``npm ci`` unless node_modules matches the committed lock file already."""
    lock = CLIENT_DIR / "package-lock.json"
    installed = CLIENT_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    result = subprocess.run(
        [npm_path, "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


def summary(tap: str) -> dict[str, int]:
    """The ``# pass N`` / ``# fail N`` / ``# skipped N`` lines of node's TAP output."""
    pattern = r"^# (tests|pass|fail|skip|skipped|cancelled|todo) (\d+)$"
    counts = {name: int(value) for name, value in re.findall(pattern, tap, re.M)}
    if "skip" in counts:  # older Node versions print "# skip N"
        counts.setdefault("skipped", counts.pop("skip"))
    return counts


def test_typescript_client_against_live_server(server_target: str) -> None:
    npm_path = npm()
    ensure_node_modules(npm_path)
    env = os.environ | {"MCPROUTER_TARGET": server_target, "NO_COLOR": "1"}
    result = subprocess.run(
        [npm_path, "test"],
        cwd=CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=NPM_TEST_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"npm test failed ({result.returncode}):\n{output}"
    counts = summary(result.stdout)
    assert counts.get("fail") == 0, output
    assert counts.get("skipped") == 0, f"live tests were skipped:\n{output}"
    assert counts.get("pass", 0) >= MIN_PASSED, output
    dedup_test = r"^\s*ok \d+ - track an event: STORED; the same event again: DUPLICATE$"
    assert re.search(dedup_test, output, re.M), output


PLAIN_JS = """
import { RouterClient, RouterError, ServeStatus } from "@mcprouter/client";

const client = new RouterClient({ target: process.argv[2] });
try {
  console.log("health", await client.health());
  try {
    await client.getExperiment("no such id!");
  } catch (err) {
    console.log("error", err instanceof RouterError, err.statusName, err.reason);
  }
  console.log("enum", ServeStatus[ServeStatus.CACHED]);
} finally {
  client.close();
}
"""


def test_package_builds_to_javascript_a_plain_js_project_can_import(
    server_target: str, tmp_path: Path
) -> None:
    npm_path = npm()
    ensure_node_modules(npm_path)
    packed = subprocess.run(
        [npm_path, "pack", "--dry-run", "--json"],  # runs prepack: the tsc build
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TEST_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr
    (manifest,) = json.loads(packed.stdout[packed.stdout.index("[") :])
    files = {f["path"] for f in manifest["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/client.d.ts", "package.json"} <= files
    assert not any(f.startswith(("test/", "node_modules/")) for f in files)
    package = json.loads((CLIENT_DIR / "package.json").read_text())
    assert "private" not in package and package["exports"]["."]["import"] == "./dist/index.js"

    # A plain JavaScript project: no TypeScript, no tsx; the package by name.
    (tmp_path / "package.json").write_text('{"type": "module"}')
    scope = tmp_path / "node_modules" / "@mcprouter"
    scope.mkdir(parents=True)
    (scope / "client").symlink_to(CLIENT_DIR, target_is_directory=True)
    (tmp_path / "main.js").write_text(PLAIN_JS)
    result = subprocess.run(
        ["node", "main.js", server_target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "health SERVING",
        "error true INVALID_ARGUMENT INVALID_ID",
        "enum CACHED",
    ]
