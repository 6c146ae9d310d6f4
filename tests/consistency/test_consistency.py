"""The fixed-seed consistency run of ``make test`` (about a minute of fault phases).

It asserts zero violations; the table is printed in the terminal summary and
written to ``.pytest_cache/d/consistency/report.txt`` (see ``conftest.py``).
Soak runs: ``python -m tests.consistency --seed N --duration S``.
"""

from __future__ import annotations

import pytest

from tests.backends import port_open
from tests.consistency.cluster import POSTGRES
from tests.consistency.report import evidence
from tests.consistency.runner import Options, run

pytestmark = pytest.mark.e2e

SEED = 7
# One cycle of every phase takes about a minute (see faults.Timing).
DURATION_S = 60.0

REPORT: list[str] = []


@pytest.mark.timeout(420)
async def test_no_violations_under_faults() -> None:
    if not port_open(*POSTGRES):
        pytest.skip("the checker runs on the machine's PostgreSQL (127.0.0.1:5432), not found")
    result = await run(Options(seed=SEED, duration_s=DURATION_S))
    REPORT.append(result.report)
    assert not result.violations, (
        f"{len(result.violations)} consistency violations:\n"
        + evidence(result.violations[:20])
        + "\n\n"
        + result.report
    )
