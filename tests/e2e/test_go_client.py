"""The Go client (clients/go) built offline from Debian's Go sources (see ``golang.py``).

``go test`` reproduces the assignment vectors and checks the client's error
decoding; the quickstart program then drives the shared e2e server and
checks the server's assignments against the local algorithm, STORED then
DUPLICATE, an ErrorInfo reason, health and Stats. Skipped, naming ``make
test`` and the apt-get line, when the toolchain or the sources are missing;
under ``make test`` (which installs them) that is a failure instead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.golang import MODULE_PATH, go, gopath, module_path

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def go_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return gopath(tmp_path_factory.mktemp("gopath"))


def test_module_path_is_go_gettable() -> None:
    # A path under the repository's host, so `go get` can fetch it (module mode).
    assert module_path() == MODULE_PATH


def test_go_client_reproduces_assignment_vectors(go_package: tuple[Path, dict[str, str]]) -> None:
    package, env = go_package
    result = go(package, env, "test", "-count=1", "-v", "./...")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--- PASS: TestVectorsBucketAndVariant" in output, output
    assert "--- PASS: TestVectorsChooseVariant" in output, output
    assert "--- PASS: TestErrorNamesTheProblemOnce" in output, output


def test_go_client_against_live_server(
    go_package: tuple[Path, dict[str, str]], server_target: str, tmp_path: Path
) -> None:
    package, env = go_package
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
