"""Tests that need a toolchain outside Python (Go, Node.js, promtool).

``make test`` installs every toolchain and sets ``REQUIRE_TOOLCHAINS``: there
(and wherever ``CI`` is set) a missing one fails the test, so a full run can
never pass with a language silently left out. A plain ``pytest`` elsewhere
skips instead, with a reason (shown by ``-rs``, in the default options) naming
the command that runs it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_TOOLCHAINS = "MCPROUTER_TEST_REQUIRE_TOOLCHAINS"


def required() -> bool:
    """Whether a missing toolchain is a failure (``make test``, or a CI run)."""
    return any(os.environ.get(name, "") not in ("", "0") for name in (REQUIRE_TOOLCHAINS, "CI"))


def missing(what: str, install: str) -> NoReturn:
    """Fail under ``make test``, otherwise skip saying how to run the test."""
    if required():
        pytest.fail(f"{what}, but every test must run here (make test, or CI): {install}")
    pytest.skip(f"{what}: run `make test`, which installs it ({install})")
