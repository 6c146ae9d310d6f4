"""No file of the repository carries a leftover merge-conflict marker."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKERS = ("<<<<<<< ", ">>>>>>> ", "=======\n")


def test_no_conflict_markers_in_tracked_text_files() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    offenders = []
    for raw in filter(None, listed):
        path = REPO / raw.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            if line.startswith(MARKERS[:2]) or line == MARKERS[2]:
                offenders.append(f"{raw.decode()}:{number}")
    assert offenders == []
