"""One conformance scenario, three languages: clients/conformance/scenario.json.

The Python, TypeScript and Go runners each execute every step of the one
scenario file through their own SDK against the shared e2e server (each with
its own ids), and each must pass every step: the same statuses, cache keys,
values, gRPC codes, ErrorInfo reasons and field violations. The runs are
printed (``pytest -s``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.golang import go, gopath
from tests.e2e.test_typescript_client import CLIENT_DIR as TS_DIR
from tests.e2e.test_typescript_client import ensure_node_modules, npm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "clients" / "conformance" / "scenario.json"


def steps() -> int:
    import json

    return len(json.loads(SCENARIO.read_text())["steps"])


def judge(language: str, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    print(f"\n----- conformance: {language} -----\n{output}")
    assert result.returncode == 0, output
    closing = re.search(rf"^conformance \({language}, run \S+\): (\d+) passed, (\d+) failed$",
                        result.stdout, re.M)  # fmt: skip
    assert closing, output
    assert (int(closing[1]), int(closing[2])) == (steps(), 0), output


def run(command: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_python(server_target: str, tmp_path: Path) -> None:
    script = REPO / "clients" / "conformance" / "run_python.py"
    judge("python", run([sys.executable, str(script), server_target, str(SCENARIO)], tmp_path))


def test_typescript(server_target: str) -> None:
    ensure_node_modules(npm())
    command = ["node", "--import", "tsx", "conformance/run.ts", server_target, str(SCENARIO)]
    judge("typescript", run(command, TS_DIR))


def test_go(server_target: str, tmp_path: Path) -> None:
    package, env = gopath(tmp_path / "gopath")
    binary = tmp_path / "conformance"
    built = go(package, env, "build", "-o", str(binary), "./cmd/conformance")
    assert built.returncode == 0, built.stdout + built.stderr
    judge("go", run([str(binary), "-target", server_target, "-scenario", str(SCENARIO)], tmp_path))
