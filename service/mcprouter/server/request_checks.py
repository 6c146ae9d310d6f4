"""Checks of every RPC's request, run once at the edge before anything reaches a key or a query.

The per-operation checks are listed in ``operations.py``'s table (one per
``RouteDataRequest.operation`` case); ``GetCached`` and ``Invalidate`` are
checked by the two functions at the end. Nothing here imports gRPC.

Each check names the offending field by its path in the request (for example
``track_events.events[3].value``) so the ``google.rpc.BadRequest`` a client
gets points at the exact input to fix. Limits live in ``limits.py`` and are
listed in the README.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mcprouter.server import keys
from mcprouter.server.chroma.filters import check_collection
from mcprouter.server.entity_checks import check_experiment, check_user_profile
from mcprouter.server.limits import (
    EARLIEST_TIME,
    MAX_CLOCK_SKEW,
    MAX_DIMENSION,
    MAX_DOCUMENT_LENGTH,
    MAX_EVENTS_PER_CALL,
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_VALUES,
    MAX_ITEMS_PER_CALL,
    MAX_K,
    MAX_KEYS_PER_CALL,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUE_LENGTH,
)
from mcprouter.server.validation import Reason, Violations
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import search_pb2 as search

_EARLIEST_SECONDS = int(EARLIEST_TIME.timestamp())

_SCALAR_OPERATORS = {
    search.FILTER_OPERATOR_EQ,
    search.FILTER_OPERATOR_NE,
    search.FILTER_OPERATOR_GT,
    search.FILTER_OPERATOR_GTE,
    search.FILTER_OPERATOR_LT,
    search.FILTER_OPERATOR_LTE,
}
_LIST_OPERATORS = {search.FILTER_OPERATOR_IN, search.FILTER_OPERATOR_NOT_IN}


def _timestamp(
    v: Violations, field: str, ts: Timestamp, present: bool, *, now: datetime
) -> datetime | None:
    if not present:
        v.required(field)
        return None
    if not 0 <= ts.nanos < 1_000_000_000:
        v.add(field, "has nanos out of range", Reason.INVALID_TIMESTAMP)
        return None
    # Compared as seconds first: ToDatetime raises on seconds outside years
    # 1..9999, which a client can send (found by the fuzz test).
    latest = now + MAX_CLOCK_SKEW
    if ts.seconds < _EARLIEST_SECONDS:
        v.add(field, "must not be before 2000-01-01T00:00:00Z", Reason.INVALID_TIMESTAMP)
        return None
    if ts.seconds > latest.timestamp():
        v.add(field, "must not be more than 1 hour in the future", Reason.INVALID_TIMESTAMP)
        return None
    moment = ts.ToDatetime(tzinfo=UTC)
    if moment > latest:
        v.add(field, "must not be more than 1 hour in the future", Reason.INVALID_TIMESTAMP)
    return moment


def _experiment_id(v: Violations, prefix: str, op: Any) -> None:
    v.identifier(f"{prefix}.experiment_id", op.experiment_id)


def get_assignment(v: Violations, op: rs.GetAssignmentOperation, now: datetime) -> None:
    """Check a ``get_assignment`` operation."""
    v.identifier("get_assignment.experiment_id", op.experiment_id)
    v.identifier("get_assignment.user_id", op.user_id)


def get_event_metrics(v: Violations, op: rs.GetEventMetricsOperation, now: datetime) -> None:
    """Check a ``get_event_metrics`` operation."""
    p = "get_event_metrics"
    v.identifier(f"{p}.experiment_id", op.experiment_id)
    v.identifier(f"{p}.variant", op.variant)
    v.identifier(f"{p}.metric", op.metric)
    hour = _timestamp(v, f"{p}.hour", op.hour, op.HasField("hour"), now=now)
    if hour is not None and (hour.minute or hour.second or hour.microsecond):
        v.add(f"{p}.hour", "must be truncated to the hour (UTC)", Reason.HOUR_NOT_TRUNCATED)


def get_analytics(v: Violations, op: rs.GetAnalyticsOperation, now: datetime) -> None:
    """Check a ``get_analytics`` operation."""
    v.identifier("get_analytics.experiment_id", op.experiment_id)
    day = _timestamp(v, "get_analytics.day", op.day, op.HasField("day"), now=now)
    if day is not None and (day.hour or day.minute or day.second or day.microsecond):
        v.add("get_analytics.day", "must be truncated to midnight (UTC)", Reason.DAY_NOT_TRUNCATED)


def _vector(v: Violations, field: str, values: Any) -> None:
    if not 1 <= len(values) <= MAX_DIMENSION:
        v.add(
            field,
            f"must hold 1..{MAX_DIMENSION} elements, got {len(values)}",
            Reason.INVALID_EMBEDDING,
        )
    # One pass finds the first bad component; a 4096-long list is cheap.
    for index, component in enumerate(values):
        if not math.isfinite(component):
            v.add(f"{field}[{index}]", "must be a finite number", Reason.INVALID_EMBEDDING)
            break


def _metadata_value(v: Violations, field: str, value: search.MetadataValue) -> None:
    kind = value.WhichOneof("kind")
    if kind is None:
        v.add(
            field,
            "must set one of string_value, int_value, double_value, bool_value",
            Reason.MISSING_FIELD,
        )
    elif kind == "double_value":
        v.finite(field, value.double_value)
    elif kind == "string_value":
        v.text(field, value.string_value, MAX_METADATA_VALUE_LENGTH)


def _filter(v: Violations, field: str, flt: search.MetadataFilter) -> None:
    v.count(f"{field}.conditions", len(flt.conditions), 1, MAX_FILTER_CONDITIONS)
    for i, cond in enumerate(flt.conditions[:MAX_FILTER_CONDITIONS]):
        at = f"{field}.conditions[{i}]"
        v.identifier(f"{at}.key", cond.key)
        if cond.operator in _SCALAR_OPERATORS:
            if not cond.HasField("value"):
                v.add(f"{at}.value", "is required for this operator", Reason.MISSING_FIELD)
            else:
                _metadata_value(v, f"{at}.value", cond.value)
        elif cond.operator in _LIST_OPERATORS:
            v.count(f"{at}.values", len(cond.values), 1, MAX_FILTER_VALUES)
            for j, item in enumerate(cond.values[:MAX_FILTER_VALUES]):
                _metadata_value(v, f"{at}.values[{j}]", item)
        else:
            v.add(f"{at}.operator", "must be a known FILTER_OPERATOR_* value", Reason.INVALID_ENUM)


def semantic_search(v: Violations, op: rs.SemanticSearchOperation, now: datetime) -> None:
    """Check a ``semantic_search`` operation."""
    check_collection(v, "semantic_search.collection", op.collection)
    _vector(v, "semantic_search.embedding", op.embedding)
    if not 1 <= op.k <= MAX_K:
        v.add("semantic_search.k", f"must be 1..{MAX_K}, got {op.k}", Reason.OUT_OF_RANGE)
    if op.HasField("filter"):
        _filter(v, "semantic_search.filter", op.filter)


def track_events(v: Violations, op: rs.TrackEventsOperation, now: datetime) -> None:
    """Check a ``track_events`` operation."""
    v.count("track_events.events", len(op.events), 1, MAX_EVENTS_PER_CALL)
    for i, event in enumerate(op.events[:MAX_EVENTS_PER_CALL]):
        at = f"track_events.events[{i}]"
        for name in ("event_id", "experiment_id", "user_id", "variant", "event_type"):
            v.identifier(f"{at}.{name}", getattr(event, name))
        v.finite(f"{at}.value", event.value)
        _timestamp(v, f"{at}.timestamp", event.timestamp, event.HasField("timestamp"), now=now)


def upsert_experiment(v: Violations, op: rs.UpsertExperimentOperation, now: datetime) -> None:
    """Check a ``upsert_experiment`` operation."""
    if not op.HasField("experiment"):
        v.required("upsert_experiment.experiment")
    else:
        check_experiment(v, op.experiment, "upsert_experiment.experiment")


def upsert_user_profile(v: Violations, op: rs.UpsertUserProfileOperation, now: datetime) -> None:
    """Check a ``upsert_user_profile`` operation."""
    if not op.HasField("profile"):
        v.required("upsert_user_profile.profile")
    else:
        check_user_profile(v, op.profile, "upsert_user_profile.profile")


def upsert_embeddings(v: Violations, op: rs.UpsertEmbeddingsOperation, now: datetime) -> None:
    """Check a ``upsert_embeddings`` operation."""
    p = "upsert_embeddings"
    check_collection(v, f"{p}.collection", op.collection)
    v.count(f"{p}.items", len(op.items), 1, MAX_ITEMS_PER_CALL)
    dimension = len(op.items[0].embedding) if op.items else 0
    first_index: dict[str, int] = {}
    for i, item in enumerate(op.items[:MAX_ITEMS_PER_CALL]):
        at = f"{p}.items[{i}]"
        v.identifier(f"{at}.id", item.id)
        if (seen := first_index.setdefault(item.id, i)) != i:
            v.add(f"{at}.id", f"duplicates items[{seen}].id {item.id!r}")
        _vector(v, f"{at}.embedding", item.embedding)
        if len(item.embedding) != dimension:
            v.add(
                f"{at}.embedding",
                f"has dimension {len(item.embedding)}, items[0] {dimension}",
                Reason.INVALID_EMBEDDING,
            )
        if item.HasField("document"):
            v.text(f"{at}.document", item.document, MAX_DOCUMENT_LENGTH)
        v.count(f"{at}.metadata", len(item.metadata), 0, MAX_METADATA_ENTRIES)
        for name, value in item.metadata.items():
            v.identifier(f"{at}.metadata[{name!r}]", name)
            _metadata_value(v, f"{at}.metadata[{name!r}]", value)


def get_experiment(v: Violations, op: rs.GetExperimentOperation, now: datetime) -> None:
    """Check a ``get_experiment`` operation."""
    _experiment_id(v, "get_experiment", op)


def get_user_profile(v: Violations, op: rs.GetUserProfileOperation, now: datetime) -> None:
    """Check a ``get_user_profile`` operation."""
    v.identifier("get_user_profile.user_id", op.user_id)


def validate_get_cached(request: rs.GetCachedRequest) -> None:
    """Check a GetCached request."""
    v = Violations()
    v.count("keys", len(request.keys), 1, MAX_KEYS_PER_CALL)
    for i, key in enumerate(request.keys[:MAX_KEYS_PER_CALL]):
        if problem := keys.key_problem(key):
            v.add(f"keys[{i}]", problem, Reason.INVALID_KEY)
    v.raise_if_any()


def validate_invalidate(request: rs.InvalidateRequest) -> str:
    """Check an Invalidate request; return its target (the oneof case)."""
    case = request.WhichOneof("target")
    v = Violations()
    if case is None:
        v.add(
            "target",
            "exactly one of keys, pattern, experiment_id, user_id, collection",
            Reason.MISSING_FIELD,
        )
    elif case == "keys":
        v.count("keys.keys", len(request.keys.keys), 1, MAX_KEYS_PER_CALL)
        for i, key in enumerate(request.keys.keys[:MAX_KEYS_PER_CALL]):
            if problem := keys.key_problem(key):
                v.add(f"keys.keys[{i}]", problem, Reason.INVALID_KEY)
    elif case == "pattern":
        if problem := keys.pattern_problem(request.pattern):
            v.add("pattern", problem, Reason.INVALID_PATTERN)
    else:
        v.identifier(case, getattr(request, case))
    v.raise_if_any()
    assert case is not None  # raise_if_any raised otherwise
    return case
