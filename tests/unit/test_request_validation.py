"""Request validation names every bad field by its path."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format

from mcprouter.server import request_checks as checks
from mcprouter.server.errors import InvalidArgument
from mcprouter.server.operations import validated
from mcprouter.v1 import router_service_pb2 as rs

NOW = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)


def violations(request: rs.RouteDataRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validated(request, now=NOW)
    return {v.field: v.description for v in caught.value.violations}


def request(body: dict[str, object]) -> rs.RouteDataRequest:
    return json_format.ParseDict(body, rs.RouteDataRequest())


def test_empty_oneof_is_rejected() -> None:
    assert "operation" in violations(rs.RouteDataRequest())


def test_valid_reads_pass_and_return_their_case() -> None:
    cases = {
        "get_experiment": {"get_experiment": {"experiment_id": "exp-1"}},
        "get_assignment": {"get_assignment": {"experiment_id": "e", "user_id": "u.1"}},
        "get_event_metrics": {
            "get_event_metrics": {
                "experiment_id": "e",
                "variant": "control",
                "metric": "clicks",
                "hour": "2026-11-25T11:00:00Z",
            }
        },
        "get_analytics": {"get_analytics": {"experiment_id": "e", "day": "2026-11-24T00:00:00Z"}},
        "semantic_search": {"semantic_search": {"collection": "docs", "embedding": [0.1], "k": 3}},
    }
    for case, body in cases.items():
        assert validated(request(body), now=NOW).name == case


def test_bad_ids_are_named_by_path() -> None:
    found = violations(request({"get_assignment": {"experiment_id": "a:b", "user_id": ""}}))
    assert set(found) == {"get_assignment.experiment_id", "get_assignment.user_id"}
    assert found["get_assignment.user_id"] == "is required"


def test_hour_must_be_truncated_and_in_range() -> None:
    body = {"experiment_id": "e", "variant": "v", "metric": "m", "hour": "2026-11-25T11:05:00Z"}
    assert "get_event_metrics.hour" in violations(request({"get_event_metrics": body}))
    body["hour"] = "1999-12-31T23:00:00Z"
    assert "get_event_metrics.hour" in violations(request({"get_event_metrics": body}))
    del body["hour"]
    assert violations(request({"get_event_metrics": body}))["get_event_metrics.hour"] == (
        "is required"
    )


def test_track_events_checks_every_event() -> None:
    good = {
        "event_id": "ev-1",
        "experiment_id": "e",
        "user_id": "u",
        "variant": "control",
        "event_type": "click",
        "value": 1.0,
        "timestamp": "2026-11-25T12:00:00Z",
    }
    future = dict(good, timestamp=(NOW + timedelta(hours=2)).isoformat().replace("+00:00", "Z"))
    op = request({"track_events": {"events": [good, dict(good, event_id="x*"), future]}})
    op.track_events.events[0].value = math.nan
    found = violations(op)
    assert set(found) == {
        "track_events.events[0].value",
        "track_events.events[1].event_id",
        "track_events.events[2].timestamp",
    }


def test_oversized_batches_are_rejected() -> None:
    op = rs.RouteDataRequest()
    op.track_events.events.add()  # make the oneof set
    del op.track_events.events[:]
    assert "track_events.events" in violations(op)


def test_semantic_search_bounds() -> None:
    op = request({"semantic_search": {"collection": "docs", "embedding": [1.0], "k": 101}})
    op.semantic_search.embedding.append(math.inf)
    found = violations(op)
    assert set(found) == {"semantic_search.k", "semantic_search.embedding[1]"}


def test_filter_conditions_are_typed() -> None:
    op = request(
        {
            "semantic_search": {
                "collection": "docs",
                "embedding": [1.0],
                "k": 1,
                "filter": {
                    "conditions": [
                        {"key": "$where", "operator": "FILTER_OPERATOR_EQ"},
                        {"key": "kind", "operator": "FILTER_OPERATOR_IN"},
                        {"key": "kind"},
                    ]
                },
            }
        }
    )
    found = violations(op)
    assert set(found) == {
        "semantic_search.filter.conditions[0].key",
        "semantic_search.filter.conditions[0].value",
        "semantic_search.filter.conditions[1].values",
        "semantic_search.filter.conditions[2].operator",
    }


def test_upsert_experiment_checks_variants() -> None:
    op = request(
        {
            "upsert_experiment": {
                "experiment": {
                    "experiment_id": "e",
                    "name": "N",
                    "status": "EXPERIMENT_STATUS_RUNNING",
                    "variants": [
                        {"name": "a", "weight": 1},
                        {"name": "a", "weight": 0},
                    ],
                }
            }
        }
    )
    found = violations(op)
    assert set(found) == {
        "upsert_experiment.experiment.variants[1].name",
        "upsert_experiment.experiment.variants[1].weight",
    }
    assert "upsert_experiment.experiment" in violations(request({"upsert_experiment": {}}))


def test_upsert_embeddings_requires_one_dimension() -> None:
    op = request(
        {
            "upsert_embeddings": {
                "collection": "docs",
                "items": [{"id": "a", "embedding": [1, 2]}, {"id": "b", "embedding": [1]}],
            }
        }
    )
    assert "upsert_embeddings.items[1].embedding" in violations(op)


def test_get_cached_and_invalidate_validation() -> None:
    with pytest.raises(InvalidArgument):
        checks.validate_get_cached(rs.GetCachedRequest())
    with pytest.raises(InvalidArgument) as caught:
        checks.validate_get_cached(rs.GetCachedRequest(keys=["experiment:ok", "experiment:*"]))
    assert [v.field for v in caught.value.violations] == ["keys[1]"]
    assert checks.validate_invalidate(rs.InvalidateRequest(pattern="metrics:e:*")) == "pattern"
    for bad in (
        rs.InvalidateRequest(),
        rs.InvalidateRequest(pattern="*"),
        rs.InvalidateRequest(user_id="u*"),
        rs.InvalidateRequest(keys=rs.KeyList()),
    ):
        with pytest.raises(InvalidArgument):
            checks.validate_invalidate(bad)


def test_nul_characters_are_refused_where_postgresql_would_fail() -> None:
    profile = rs.UpsertUserProfileOperation()
    profile.profile.user_id = "u1"
    profile.profile.attributes["\x00"] = ""
    profile.profile.attributes["plan"] = "a\x00b"
    found = violations(rs.RouteDataRequest(upsert_user_profile=profile))
    assert any("NUL" in d for d in found.values()), found
    assert len(found) == 2


def reasons(request: rs.RouteDataRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validated(request, now=NOW)
    return {v.field: v.reason for v in caught.value.violations}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (
            {"get_experiment": {"experiment_id": "no spaces"}},
            "get_experiment.experiment_id",
            "INVALID_ID",
        ),
        ({"get_experiment": {}}, "get_experiment.experiment_id", "MISSING_FIELD"),
        (
            {
                "get_event_metrics": {
                    "experiment_id": "e",
                    "variant": "v",
                    "metric": "m",
                    "hour": "2026-11-25T11:30:00Z",
                }
            },
            "get_event_metrics.hour",
            "HOUR_NOT_TRUNCATED",
        ),
        (
            {"get_analytics": {"experiment_id": "e", "day": "2026-11-25T11:00:00Z"}},
            "get_analytics.day",
            "DAY_NOT_TRUNCATED",
        ),
        (
            {"get_analytics": {"experiment_id": "e", "day": "1999-01-01T00:00:00Z"}},
            "get_analytics.day",
            "INVALID_TIMESTAMP",
        ),
        (
            {"semantic_search": {"collection": "c1", "embedding": [], "k": 1}},
            "semantic_search.embedding",
            "INVALID_EMBEDDING",
        ),
        (
            {"semantic_search": {"collection": "c1", "embedding": [1.0], "k": 0}},
            "semantic_search.k",
            "OUT_OF_RANGE",
        ),
        (
            {
                "track_events": {
                    "events": [
                        {
                            "event_id": "e",
                            "experiment_id": "x",
                            "user_id": "u",
                            "variant": "v",
                            "event_type": "t",
                        }
                    ]
                }
            },
            "track_events.events[0].timestamp",
            "MISSING_FIELD",
        ),
        ({"track_events": {"events": [{}] * 1001}}, "track_events.events", "TOO_MANY_ITEMS"),
        (
            {
                "upsert_experiment": {
                    "experiment": {
                        "experiment_id": "e",
                        "name": "n",
                        "status": "EXPERIMENT_STATUS_UNSPECIFIED",
                        "variants": [{"name": "a", "weight": 1}],
                    }
                }
            },
            "upsert_experiment.experiment.status",
            "INVALID_ENUM",
        ),
    ],
)
def test_each_violation_names_its_kind(body: dict[str, object], field: str, reason: str) -> None:
    assert reasons(request(body))[field] == reason


def test_error_info_reason_is_the_first_violation() -> None:
    body = {
        "get_event_metrics": {
            "experiment_id": "e",
            "variant": "v",
            "metric": "m",
            "hour": "2026-11-25T11:30:00Z",
        }
    }
    with pytest.raises(InvalidArgument) as caught:
        validated(request(body), now=NOW)
    assert caught.value.reason == "HOUR_NOT_TRUNCATED"
