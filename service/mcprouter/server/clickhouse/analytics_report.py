"""Turns per-variant counts into the ``Analytics`` an experimenter reads.

Pure: counts in, message out; the statistics live in ``analytics_math``.

Variants listed: every variant of the experiment, in the experiment's order
(the first is the control, per ``Experiment.variants``), with zeros when it
had no events that day, so a dashboard always shows every arm; then any
variant seen in the events that the experiment no longer lists (renamed or
removed arms keep their history), by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from mcprouter.server.clickhouse import analytics_math as am
from mcprouter.server.clickhouse.store import VariantCounts
from mcprouter.v1.events_pb2 import Analytics, VariantAnalytics


def build_analytics(
    experiment_id: str,
    day: datetime,
    variants: Sequence[str],
    counts: Sequence[VariantCounts],
) -> Analytics:
    """The day's analytics of one experiment.

    Args:
        experiment_id: The experiment.
        day: Start of the UTC day.
        variants: The experiment's variant names, control first.
        counts: Raw figures per variant seen that day.

    Returns:
        One ``VariantAnalytics`` per variant, compared with the control.
    """
    by_name = {c.variant: c for c in counts}
    names = list(variants) + sorted(set(by_name) - set(variants))
    control_name = variants[0] if variants else (names[0] if names else "")
    control = by_name.get(control_name, VariantCounts(control_name, 0, 0, 0.0))
    report = Analytics(experiment_id=experiment_id, control_variant=control_name)
    report.day.FromDatetime(day)
    for name in names:
        c = by_name.get(name, VariantCounts(name, 0, 0, 0.0))
        item = VariantAnalytics(
            variant=name,
            is_control=name == control_name,
            exposed_users=c.exposed_users,
            converting_users=c.converting_users,
            conversion_rate=am.conversion_rate(c.converting_users, c.exposed_users),
            total_value=c.total_value,
            mean_value=c.total_value / c.exposed_users if c.exposed_users else 0.0,
        )
        if item.is_control:
            # Compared with itself: no lift, no evidence, a zero-width interval.
            item.relative_lift, item.p_value = 0.0, 1.0
        else:
            cmp = am.compare(
                c.converting_users, c.exposed_users, control.converting_users, control.exposed_users
            )
            # NaN would reach JSON clients as the string "NaN": a flag says it instead.
            item.relative_lift_undefined = math.isnan(cmp.relative_lift)
            item.relative_lift = 0.0 if item.relative_lift_undefined else cmp.relative_lift
            item.p_value = cmp.p_value
            item.confidence_interval_undefined = math.isnan(cmp.ci_low) or math.isnan(cmp.ci_high)
            if not item.confidence_interval_undefined:
                item.ci_low, item.ci_high = cmp.ci_low, cmp.ci_high
        report.variants.append(item)
    return report
