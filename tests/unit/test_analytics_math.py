"""The A/B statistics against values worked out independently.

Worked example (control 100/1000 converted, treatment 130/1000):

* rates 0.10 and 0.13; relative lift (0.13 - 0.10) / 0.10 = 0.3;
* pooled rate 230/2000 = 0.115; SE = sqrt(0.115 * 0.885 * (1/1000 + 1/1000))
  = sqrt(0.00020355) = 0.01426709...; z = 0.03 / SE = 2.10274060...;
* two-sided p = 2 * (1 - Phi(z)) = 0.03548845 (Simpson integration of the
  normal density, and statistics.NormalDist below);
* unpooled SE = sqrt(0.13 * 0.87 / 1000 + 0.10 * 0.90 / 1000) = sqrt(0.0002031);
  95% CI = 0.03 -/+ 1.959964 * 0.01425132 = (0.00206793, 0.05793207).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from mcprouter.server.clickhouse import analytics_math as am

TOL = 1e-6


def independent_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 2 * (1 - NormalDist().cdf(abs(z)))


def test_conversion_rate() -> None:
    assert am.conversion_rate(130, 1000) == pytest.approx(0.13, abs=TOL)
    assert am.conversion_rate(0, 0) == 0.0


def test_relative_lift() -> None:
    assert am.relative_lift(0.13, 0.10) == pytest.approx(0.3, abs=TOL)
    assert am.relative_lift(0.05, 0.10) == pytest.approx(-0.5, abs=TOL)
    assert math.isnan(am.relative_lift(0.1, 0.0))


def test_p_value_worked_example() -> None:
    p = am.two_proportion_p_value(130, 1000, 100, 1000)
    assert p == pytest.approx(0.03548845046647, abs=TOL)
    assert p == pytest.approx(independent_p_value(130, 1000, 100, 1000), abs=1e-9)


def test_p_value_is_symmetric_and_unequal_sizes() -> None:
    # 45/500 vs 60/520: z = -1.33368157, p = 0.18230824.
    p = am.two_proportion_p_value(45, 500, 60, 520)
    assert p == pytest.approx(0.18230823619416, abs=TOL)
    assert am.two_proportion_p_value(60, 520, 45, 500) == pytest.approx(p, abs=1e-12)


def test_p_value_degenerate() -> None:
    assert am.two_proportion_p_value(0, 100, 0, 100) == 1.0  # pooled 0: no variance
    assert am.two_proportion_p_value(100, 100, 50, 50) == 1.0  # pooled 1
    assert am.two_proportion_p_value(3, 0, 5, 10) == 1.0  # an empty arm
    assert am.two_proportion_p_value(50, 100, 50, 100) == pytest.approx(1.0, abs=TOL)


def test_confidence_interval_worked_example() -> None:
    low, high = am.difference_ci(130, 1000, 100, 1000)
    assert low == pytest.approx(0.03 - 1.959963984540054 * math.sqrt(0.0002031), abs=1e-12)
    assert (low, high) == pytest.approx((0.00206793443938, 0.05793206556062), abs=TOL)


def test_confidence_interval_unequal_sizes_and_empty_arm() -> None:
    low, high = am.difference_ci(45, 500, 60, 520)
    assert (low, high) == pytest.approx((-0.06257698594553, 0.01180775517630), abs=TOL)
    assert all(math.isnan(x) for x in am.difference_ci(1, 0, 1, 10))


def test_compare_bundles_everything() -> None:
    cmp = am.compare(130, 1000, 100, 1000)
    assert cmp.relative_lift == pytest.approx(0.3, abs=TOL)
    assert cmp.p_value == pytest.approx(0.03548845, abs=TOL)
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx((0.00206793, 0.05793207), abs=TOL)
