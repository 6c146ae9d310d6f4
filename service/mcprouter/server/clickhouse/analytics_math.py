"""The statistics of an A/B comparison, as pure functions of counts.

Everything here is closed-form and dependency-free (``math.erfc`` instead of
scipy), so it is the same in every process and easy to check by hand.

Conventions for degenerate inputs, chosen so an answer is always a number a
dashboard can show and never an exception:

* a rate over zero users is 0 (no users, no conversions);
* a relative lift against a control rate of 0, or of an arm nobody was
  exposed to, is NaN (undefined, and shown as such rather than as a
  misleading 0, -100% or infinity);
* a z-test with an empty arm, or with a pooled rate of 0 or 1 (both arms
  identical, the standard error vanishes), has p-value 1: no evidence of a
  difference;
* a confidence interval with an empty arm is (NaN, NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The 97.5th percentile of the standard normal: a two-sided 95% interval.
Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment arm against the control.

    Attributes:
        relative_lift: ``(rate - control_rate) / control_rate``.
        p_value: Two-sided p-value of the pooled two-proportion z-test.
        ci_low: Lower bound of the 95% interval of ``rate - control_rate``.
        ci_high: Upper bound of that interval.
    """

    relative_lift: float
    p_value: float
    ci_low: float
    ci_high: float


def conversion_rate(converting: int, exposed: int) -> float:
    """``converting / exposed``; 0 when nobody was exposed."""
    return converting / exposed if exposed > 0 else 0.0


def relative_lift(rate: float, control_rate: float) -> float:
    """Relative change of ``rate`` against ``control_rate``; NaN if the control is 0."""
    if control_rate == 0.0:
        return math.nan
    return (rate - control_rate) / control_rate


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test.

    ``z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2))`` with the pooled rate
    ``p = (x1 + x2) / (n1 + n2)``; the p-value is ``P(|Z| >= |z|) = erfc(|z| / sqrt 2)``.

    Args:
        x1: Converting users of the first arm.
        n1: Exposed users of the first arm.
        x2: Converting users of the second arm.
        n2: Exposed users of the second arm.

    Returns:
        The p-value in [0, 1]; 1 when the test is undefined (see the module).
    """
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2.0))


def difference_ci(x1: int, n1: int, x2: int, n2: int, z: float = Z_95) -> tuple[float, float]:
    """Confidence interval of ``p1 - p2`` with the unpooled (Wald) standard error.

    ``(p1 - p2) ± z sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)``. The pooled
    error belongs to the test (it assumes no difference); the interval
    describes the difference itself, so it uses each arm's own variance.

    Returns:
        ``(low, high)``; ``(NaN, NaN)`` when an arm is empty.
    """
    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan)
    p1, p2 = x1 / n1, x2 / n2
    half = z * math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    return (p1 - p2 - half, p1 - p2 + half)


def compare(
    converting: int, exposed: int, control_converting: int, control_exposed: int
) -> Comparison:
    """Everything an experimenter asks of one arm against the control."""
    rate = conversion_rate(converting, exposed)
    control_rate = conversion_rate(control_converting, control_exposed)
    low, high = difference_ci(converting, exposed, control_converting, control_exposed)
    return Comparison(
        relative_lift=relative_lift(rate, control_rate) if exposed > 0 else math.nan,
        p_value=two_proportion_p_value(converting, exposed, control_converting, control_exposed),
        ci_low=low,
        ci_high=high,
    )
