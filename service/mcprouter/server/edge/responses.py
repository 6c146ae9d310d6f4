"""Builds response messages from what processors return (no logic beyond mapping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError, Message

from mcprouter.server import keys
from mcprouter.server.cache import envelope
from mcprouter.server.fleet import FleetView
from mcprouter.server.operations import Operation
from mcprouter.server.redis.processor import RawEntry, RedisFigures
from mcprouter.server.router import RouteResult
from mcprouter.server.stats import Outcome, StatsSnapshot
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Analytics, EventMetrics
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.search_pb2 import SearchResult
from mcprouter.v1.serve_status_pb2 import DataType

# DataType -> (CachedEntry.value field, message class of the payload).
VALUE_TYPES: dict[DataType.ValueType, tuple[str, type[Message]]] = {
    DataType.DATA_TYPE_EXPERIMENT: ("experiment", Experiment),
    DataType.DATA_TYPE_ASSIGNMENT: ("assignment", Assignment),
    DataType.DATA_TYPE_USER_PROFILE: ("user_profile", UserProfile),
    DataType.DATA_TYPE_EVENT_METRICS: ("event_metrics", EventMetrics),
    DataType.DATA_TYPE_ANALYTICS: ("analytics", Analytics),
    DataType.DATA_TYPE_SEARCH: ("search_result", SearchResult),
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def route_response(operation: Operation, result: RouteResult) -> rs.RouteDataResponse:
    """The RouteData response of a processor's result for ``operation``."""
    response = rs.RouteDataResponse(status=result.status, cache_key=result.cache_key)
    if result.stored_at is not None:
        # What ``Timestamp.FromDatetime`` sets, without its per-call
        # ``calendar.timegm`` (seen in profiles of the hit path).
        seconds, micros = divmod((result.stored_at - _EPOCH) // _MICROSECOND, 1_000_000)
        response.stored_at.seconds = seconds
        response.stored_at.nanos = micros * 1000
    getattr(response, operation.result_field).CopyFrom(result.value)
    return response


def cached_entry(raw: RawEntry, *, now: datetime | None = None) -> rs.CachedEntry:
    """A GetCached entry, decoded when its bytes are an envelope of the key's family."""
    data_type = keys.family_of(raw.key) or DataType.DATA_TYPE_UNSPECIFIED
    entry = rs.CachedEntry(key=raw.key, hit=raw.value is not None, data_type=data_type)
    if raw.value is None:
        return entry
    if raw.ttl_ms is not None:
        entry.ttl_remaining.FromMilliseconds(raw.ttl_ms)
    decoded = envelope.decode(raw.value, data_type)
    if decoded is None:
        return entry  # a hit, but not a value this server can read
    entry.stored_at.FromNanoseconds(round(decoded.stored_at * 1e9))
    entry.fresh = decoded.is_fresh((now or datetime.now(UTC)).timestamp())
    entry.not_found = decoded.not_found
    if not decoded.not_found:
        field, message_type = VALUE_TYPES[data_type]
        try:
            value = message_type.FromString(decoded.payload)
        except DecodeError:
            return entry
        getattr(entry, field).CopyFrom(value)
    return entry


def get_cached_response(raws: list[RawEntry]) -> rs.GetCachedResponse:
    """The GetCached response, one entry per key in request order."""
    now = datetime.now(UTC)
    entries = [cached_entry(raw, now=now) for raw in raws]
    hits = sum(1 for e in entries if e.hit)
    return rs.GetCachedResponse(entries=entries, hits=hits, misses=len(entries) - hits)


def stats_response(
    snapshot: StatsSnapshot,
    figures: RedisFigures | None,
    *,
    scope: rs.StatsScope.ValueType = rs.STATS_SCOPE_PROCESS,
    view: FleetView | None = None,
) -> rs.StatsResponse:
    """The Stats response: counters (of ``scope``) plus Redis figures when reachable."""
    response = rs.StatsResponse(
        scope=scope,
        hit_rate=snapshot.hit_rate,
        total_operations=snapshot.total_operations,
        store_queries_avoided=snapshot.store_queries_avoided,
        dedup_hits=snapshot.dedup_hits,
        invalidations=snapshot.invalidations,
        redis_errors=snapshot.redis_errors,
        redis_available=figures is not None,
    )
    response.started_at.FromDatetime(snapshot.started_at)
    if view is not None:
        response.instance = view.instances[0]
        response.instances.extend(view.instances)
        response.processes = len(view.instances)
        response.max_age.FromMilliseconds(round(view.max_age_s * 1000))
    if figures is not None:
        response.redis_used_memory_bytes = figures.used_memory_bytes
        response.redis_key_count = figures.key_count
    for data_type in VALUE_TYPES:
        counts = snapshot.per_type.get(data_type, {})
        stats = rs.DataTypeStats(data_type=data_type)
        for outcome in Outcome:
            setattr(stats, outcome.value, counts.get(outcome, 0))
        response.data_types.append(stats)
    return response
