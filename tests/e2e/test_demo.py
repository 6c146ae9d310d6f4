"""``mcp-router demo``: against the shared e2e server, and embedded as README users run it."""

from __future__ import annotations

import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from mcprouter.demo import run_demo
from tests.e2e.conftest import _base_environment

pytestmark = pytest.mark.e2e

DATA_TYPES = (
    "experiment",
    "assignment",
    "user profile",
    "event metrics",
    "analytics",
    "semantic search",
)
EMBEDDED_DEMO_TIMEOUT_S = 150.0


def check_output(text: str) -> None:
    """The demo's promises, as a newcomer reads them."""
    for data_type in DATA_TYPES:
        row = re.search(
            rf"^\s+{data_type}\s+FRESH\s+[\d.]+ ms\s+CACHED\s+[\d.]+ ms\s+\S+:", text, re.MULTILINE
        )
        assert row, f"no FRESH then CACHED row for {data_type}:\n{text}"
    assert re.search(r"send an event\s+ev-\w+\s+->\s+STORED", text)
    assert re.search(r"send it again\s+ev-\w+\s+->\s+DUPLICATE", text)
    assert "stored 0, duplicates 5" in text
    pattern_removed = re.search(r"Pattern invalidation ==.*?removed\s+(\d+) keys", text, re.S)
    assert pattern_removed and int(pattern_removed.group(1)) >= 2, text
    assert re.search(r"next metrics read\s+FRESH", text)
    entity_removed = re.search(r"Entity invalidation ==.*?removed\s+(\d+) keys", text, re.S)
    assert entity_removed and int(entity_removed.group(1)) >= 2, text
    assert re.search(r"next analytics read\s+FRESH", text)
    assert re.search(r"next assignment read\s+FRESH", text)
    assert re.search(r"hit rate\s+\d+\.\d% of cached reads", text)
    assert re.search(r"this run\s+\d+\.\d% of \d+ cached reads hit", text)
    assert text.rstrip().endswith("The README shows the same calls with grpcurl.")


async def test_demo_against_a_running_server(server_target: str) -> None:
    out = StringIO()
    await run_demo(server_target, out=out)
    check_output(out.getvalue())


async def test_demo_runs_again_on_the_same_server(server_target: str) -> None:
    """Per-run ids: a second run starts from cold keys and conflicts with nothing."""
    out = StringIO()
    await run_demo(server_target, out=out)
    check_output(out.getvalue())


def test_cli_lists_the_demo_subcommand() -> None:
    """The README's ``mcp-router demo`` exists: a missing subcommand fails, never skips."""
    result = subprocess.run(
        [sys.executable, "-m", "mcprouter.server.cli", "--help"],
        env=_base_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+demo\s", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.timeout(EMBEDDED_DEMO_TIMEOUT_S + 30)
def test_embedded_demo_as_the_readme_runs_it(tmp_path: Path) -> None:
    """``mcp-router demo`` with no target starts its own embedded server and cleans up."""
    result = subprocess.run(
        [sys.executable, "-m", "mcprouter.server.cli", "demo"],
        cwd=tmp_path,
        env=_base_environment(),
        capture_output=True,
        text=True,
        timeout=EMBEDDED_DEMO_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.startswith("Starting the embedded default")
    check_output(result.stdout)
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory
