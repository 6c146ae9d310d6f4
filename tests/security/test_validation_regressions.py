"""Regressions found by tests/fuzz: hostile input must be INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import pytest

from mcprouter.server.errors import InvalidArgument
from mcprouter.server.operations import validated as validate_route_data
from mcprouter.v1 import router_service_pb2 as rs


@pytest.mark.parametrize("seconds", [-(2**63), 2**63 - 1, -62135596801, 253402300800])
def test_timestamps_beyond_the_datetime_range_are_invalid(seconds: int) -> None:
    # Timestamp.ToDatetime raises on seconds outside years 1..9999.
    requests = [
        rs.RouteDataRequest(
            get_analytics=rs.GetAnalyticsOperation(experiment_id="e", day={"seconds": seconds})
        ),
        rs.RouteDataRequest(
            get_event_metrics=rs.GetEventMetricsOperation(
                experiment_id="e", variant="v", metric="m", hour={"seconds": seconds}
            )
        ),
    ]
    for request in requests:
        with pytest.raises(InvalidArgument) as caught:
            validate_route_data(request)
        assert caught.value.violations[0].field.endswith((".day", ".hour"))
