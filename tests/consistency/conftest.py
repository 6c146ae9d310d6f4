"""Print the consistency table in the terminal summary (no ``-s`` needed), and keep it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.consistency.test_consistency import REPORT


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not REPORT:
        return
    text = "\n\n".join(REPORT) + "\n"
    terminalreporter.write_sep("=", "consistency report")
    terminalreporter.write_line(text)
    if getattr(config, "cache", None) is not None:
        path = config.cache.mkdir("consistency") / "report.txt"
        path.write_text(text)
        terminalreporter.write_line(f"(also in {path})")
