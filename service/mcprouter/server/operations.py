"""The RouteData operations, in one typed table.

Each case of ``RouteDataRequest.operation`` is one ``Operation``: its request
message, the check the edge runs on it, the ``RouteDataResponse.result`` case
it answers with, the processor (store) that owns it and the cache key family
it reads or writes. Routing (``router.py``), validation
(``request_checks.validate_route_data``), responses (``edge/responses.py``)
and metric labels all derive from this table; processors register their
handlers by ``Operation``, never by name. A test keeps the table and the
contract in step (every oneof case, every result field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from mcprouter.server import request_checks as checks
from mcprouter.server.errors import InvalidArgument
from mcprouter.server.validation import Reason, Violations
from mcprouter.v1 import router_service_pb2 as rs

Check = Callable[[Violations, Any, datetime], None]


@dataclass(frozen=True, slots=True, eq=False)
class Operation:
    """One RouteData operation.

    Attributes:
        name: The ``RouteDataRequest.operation`` case (also the metric label).
        request: Its message class.
        check: Adds a violation per bad field of a request (run once, at the edge).
        result_field: The ``RouteDataResponse.result`` case of its answer.
        owner: The processor that serves it: ``postgres``, ``clickhouse``, ``chroma``.
        family: The cache key family it reads or invalidates, if any.
        writes: Whether it changes a store.
    """

    name: str
    request: type[Message]
    check: Check
    result_field: str
    owner: str
    family: str | None
    writes: bool = False

    def __repr__(self) -> str:
        return f"Operation({self.name})"


GET_EXPERIMENT = Operation(
    "get_experiment",
    rs.GetExperimentOperation,
    checks.get_experiment,
    "experiment",
    "postgres",
    "experiment",
)
GET_ASSIGNMENT = Operation(
    "get_assignment",
    rs.GetAssignmentOperation,
    checks.get_assignment,
    "assignment",
    "postgres",
    "assignment",
)
GET_USER_PROFILE = Operation(
    "get_user_profile",
    rs.GetUserProfileOperation,
    checks.get_user_profile,
    "user_profile",
    "postgres",
    "user",
)
UPSERT_EXPERIMENT = Operation(
    "upsert_experiment",
    rs.UpsertExperimentOperation,
    checks.upsert_experiment,
    "experiment",
    "postgres",
    "experiment",
    writes=True,
)
UPSERT_USER_PROFILE = Operation(
    "upsert_user_profile",
    rs.UpsertUserProfileOperation,
    checks.upsert_user_profile,
    "user_profile",
    "postgres",
    "user",
    writes=True,
)
GET_EVENT_METRICS = Operation(
    "get_event_metrics",
    rs.GetEventMetricsOperation,
    checks.get_event_metrics,
    "event_metrics",
    "clickhouse",
    "metrics",
)
GET_ANALYTICS = Operation(
    "get_analytics",
    rs.GetAnalyticsOperation,
    checks.get_analytics,
    "analytics",
    "clickhouse",
    "analytics",
)
TRACK_EVENTS = Operation(
    "track_events",
    rs.TrackEventsOperation,
    checks.track_events,
    "track_events_result",
    "clickhouse",
    None,
    writes=True,
)
SEMANTIC_SEARCH = Operation(
    "semantic_search",
    rs.SemanticSearchOperation,
    checks.semantic_search,
    "search_result",
    "chroma",
    "search",
)
UPSERT_EMBEDDINGS = Operation(
    "upsert_embeddings",
    rs.UpsertEmbeddingsOperation,
    checks.upsert_embeddings,
    "upsert_embeddings_result",
    "chroma",
    "search",
    writes=True,
)

OPERATIONS: tuple[Operation, ...] = (
    GET_EXPERIMENT,
    GET_ASSIGNMENT,
    GET_USER_PROFILE,
    UPSERT_EXPERIMENT,
    UPSERT_USER_PROFILE,
    GET_EVENT_METRICS,
    GET_ANALYTICS,
    TRACK_EVENTS,
    SEMANTIC_SEARCH,
    UPSERT_EMBEDDINGS,
)
BY_NAME: dict[str, Operation] = {op.name: op for op in OPERATIONS}


def validated(request: rs.RouteDataRequest, *, now: datetime | None = None) -> Operation:
    """Check a RouteData request once; return its operation.

    Raises:
        InvalidArgument: No operation is set, or fields of it are bad (each named).
    """
    case = request.WhichOneof("operation")
    if case is None:
        raise InvalidArgument.single(
            "operation",
            "exactly one operation must be set (see RouteDataRequest.operation)",
            Reason.MISSING_FIELD,
        )
    operation = BY_NAME[case]
    violations = Violations()
    operation.check(violations, getattr(request, case), now or datetime.now(UTC))
    violations.raise_if_any()
    return operation
