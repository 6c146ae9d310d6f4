"""Requests of every operation, built once for the async and the sync client.

Nothing here fixes input up: an hour that is not truncated or an event
without a timestamp goes to the server as given, and the server's
``INVALID_ARGUMENT`` (``HOUR_NOT_TRUNCATED``, ``MISSING_FIELD``) says what to
fix — the same behaviour in every language's client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar, cast

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mcprouter.client._errors import Internal
from mcprouter.client._results import Served, served
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Analytics, Event, EventMetrics, TrackEventsResult
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.search_pb2 import (
    EmbeddingItem,
    MetadataFilter,
    SearchResult,
    UpsertEmbeddingsResult,
)

T = TypeVar("T", bound=Message)


@dataclass(frozen=True, slots=True)
class Operation(Generic[T]):
    """One ``RouteData`` call: the request, the result it answers, whether it may be resent.

    Attributes:
        request: The request to send.
        result: The ``RouteDataResponse.result`` case the answer must carry.
        retryable: Resent on ``UNAVAILABLE``: reads, and ``track_events``
            (event ids make a resend safe); never the version-checked upserts.
    """

    request: rs.RouteDataRequest
    result: str
    retryable: bool

    def served(self, response: rs.RouteDataResponse) -> Served[T]:
        """The typed answer, or ``Internal`` when the server answered another case."""
        actual = response.WhichOneof("result")
        if actual != self.result:
            raise Internal(
                f"the server answered {actual or 'nothing'} where {self.result} was expected"
            )
        return served(response, cast(T, getattr(response, self.result)))


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf ``Timestamp`` of ``moment`` (naive datetimes are taken as UTC)."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def current_hour() -> datetime:
    """The current UTC hour, truncated (what ``get_event_metrics`` wants)."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def today() -> datetime:
    """Midnight of the current UTC day (what ``get_analytics`` wants)."""
    return current_hour().replace(hour=0)


def get_experiment(experiment_id: str) -> Operation[Experiment]:
    """``get_experiment``."""
    op = rs.GetExperimentOperation(experiment_id=experiment_id)
    return Operation(rs.RouteDataRequest(get_experiment=op), "experiment", True)


def get_assignment(experiment_id: str, user_id: str) -> Operation[Assignment]:
    """``get_assignment`` (assigning on first request is idempotent: it is sticky)."""
    op = rs.GetAssignmentOperation(experiment_id=experiment_id, user_id=user_id)
    return Operation(rs.RouteDataRequest(get_assignment=op), "assignment", True)


def get_user_profile(user_id: str) -> Operation[UserProfile]:
    """``get_user_profile``."""
    op = rs.GetUserProfileOperation(user_id=user_id)
    return Operation(rs.RouteDataRequest(get_user_profile=op), "user_profile", True)


def get_event_metrics(
    experiment_id: str, variant: str, metric: str, hour: datetime | None
) -> Operation[EventMetrics]:
    """``get_event_metrics`` of ``hour`` (default: the current hour)."""
    op = rs.GetEventMetricsOperation(
        experiment_id=experiment_id,
        variant=variant,
        metric=metric,
        hour=timestamp(hour or current_hour()),
    )
    return Operation(rs.RouteDataRequest(get_event_metrics=op), "event_metrics", True)


def get_analytics(experiment_id: str, day: datetime | None) -> Operation[Analytics]:
    """``get_analytics`` of ``day`` (default: today)."""
    op = rs.GetAnalyticsOperation(experiment_id=experiment_id, day=timestamp(day or today()))
    return Operation(rs.RouteDataRequest(get_analytics=op), "analytics", True)


def search(
    collection: str, embedding: Sequence[float], k: int, flt: MetadataFilter | None
) -> Operation[SearchResult]:
    """``semantic_search``."""
    op = rs.SemanticSearchOperation(
        collection=collection, embedding=list(embedding), k=k, filter=flt
    )
    return Operation(rs.RouteDataRequest(semantic_search=op), "search_result", True)


def upsert_experiment(experiment: Experiment) -> Operation[Experiment]:
    """``upsert_experiment``; not resent (a committed first attempt would make it ABORTED)."""
    op = rs.UpsertExperimentOperation(experiment=experiment)
    return Operation(rs.RouteDataRequest(upsert_experiment=op), "experiment", False)


def upsert_user_profile(profile: UserProfile) -> Operation[UserProfile]:
    """``upsert_user_profile``; not resent, like ``upsert_experiment``."""
    op = rs.UpsertUserProfileOperation(profile=profile)
    return Operation(rs.RouteDataRequest(upsert_user_profile=op), "user_profile", False)


def track_events(events: Event | Iterable[Event]) -> Operation[TrackEventsResult]:
    """``track_events``: resent on UNAVAILABLE, since the server deduplicates by event id."""
    batch = [events] if isinstance(events, Event) else list(events)
    op = rs.TrackEventsOperation(events=batch)
    return Operation(rs.RouteDataRequest(track_events=op), "track_events_result", True)


def upsert_embeddings(
    collection: str, items: Iterable[EmbeddingItem]
) -> Operation[UpsertEmbeddingsResult]:
    """``upsert_embeddings``; not resent (each write bumps the collection's generation)."""
    op = rs.UpsertEmbeddingsOperation(collection=collection, items=list(items))
    return Operation(rs.RouteDataRequest(upsert_embeddings=op), "upsert_embeddings_result", False)


def key_list(keys: str | Iterable[str]) -> list[str]:
    """One key or many, as a list."""
    return [keys] if isinstance(keys, str) else list(keys)


def invalidate_request(
    *,
    keys: str | Iterable[str] | None,
    pattern: str | None,
    experiment_id: str | None,
    user_id: str | None,
    collection: str | None,
) -> rs.InvalidateRequest:
    """The ``InvalidateRequest`` of exactly one target.

    Raises:
        ValueError: Not exactly one target was given (nothing is sent).
    """
    targets = {
        "keys": keys,
        "pattern": pattern,
        "experiment_id": experiment_id,
        "user_id": user_id,
        "collection": collection,
    }
    given = [name for name, value in targets.items() if value is not None]
    if len(given) != 1:
        raise ValueError(
            "invalidate needs exactly one of keys=, pattern=, experiment_id=, "
            f"user_id=, collection= (got {', '.join(given) or 'none'})"
        )
    if keys is not None:
        return rs.InvalidateRequest(keys=rs.KeyList(keys=key_list(keys)))
    if pattern is not None:
        return rs.InvalidateRequest(pattern=pattern)
    if experiment_id is not None:
        return rs.InvalidateRequest(experiment_id=experiment_id)
    if user_id is not None:
        return rs.InvalidateRequest(user_id=user_id)
    return rs.InvalidateRequest(collection=str(collection))
