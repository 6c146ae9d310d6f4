"""Every named semantic mutant is killed by the tests that claim to catch it.

For each mutant of ``semantic.MUTANTS``: copy ``service/`` to a scratch
folder, apply the mutant's edits, and run the named tests in a subprocess
whose ``PYTHONPATH`` puts the mutated copy first. The run must fail with test
failures (not collection errors). The same tests pass on the real code: they
run in the normal suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mutants.semantic import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[2]


def mutated_copy(mutant: Mutant, folder: Path) -> Path:
    service = folder / "service"
    shutil.copytree(REPO / "service", service, ignore=shutil.ignore_patterns("__pycache__"))
    for edit in mutant.edits:
        path = service / "mcprouter" / "server" / edit.path
        text = path.read_text()
        assert text.count(edit.original) == 1, (
            f"mutant {mutant.name}: the original text is no longer (or not once) in "
            f"{edit.path}; move the mutant with the code"
        )
        path.write_text(text.replace(edit.original, edit.mutated))
    return service


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_suite_kills_the_mutant(mutant: Mutant, tmp_path: Path) -> None:
    service = mutated_copy(mutant, tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(service), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "60",
            "--basetemp",
            str(tmp_path / "pytest"),
            *mutant.killed_by,
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = done.stdout[-3000:]
    assert done.returncode == 1, f"{mutant.name} survived ({mutant.why}):\n{tail}"
    assert " failed" in tail and " error" not in tail.split("\n")[-2], tail
