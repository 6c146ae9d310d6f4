"""The Python client SDK of mcp-router.

Example:
    >>> from mcprouter.client import Experiment, ExperimentStatus, RouterClient, Variant
    >>> async with RouterClient.connect("localhost:50051") as client:
    ...     await client.upsert_experiment(Experiment(
    ...         experiment_id="checkout-v2", name="Checkout v2",
    ...         status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
    ...         variants=[Variant(name="control", weight=50),
    ...                   Variant(name="treatment", weight=50)]))
    ...     first = await client.get_experiment("checkout-v2")   # FRESH: from PostgreSQL
    ...     second = await client.get_experiment("checkout-v2")  # CACHED: from Redis
    ...     print(first.status_name, second.status_name)
    FRESH CACHED

``SyncRouterClient`` has the same methods, blocking. ``RouteData``
operations return a ``Served`` (``value``, ``status``, ``cache_key``,
``stored_at``); ``get_cached`` and ``stats`` return their response messages,
``invalidate`` the number of keys removed and ``health`` the status name.
Failures raise ``RouterError`` subclasses (see ``mcprouter.client._errors``
for the tree) carrying the call's ``request_id``. The request and result
messages of the contract are re-exported here for convenience.
"""

from mcprouter.client._calls import Metadata
from mcprouter.client._client import RouterClient
from mcprouter.client._config import IDEMPOTENT_METHODS, RetryPolicy, TlsConfig, service_config
from mcprouter.client._errors import (
    ERROR_DOMAIN,
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RouterError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_class,
    from_rpc_error,
)
from mcprouter.client._operations import current_hour, today
from mcprouter.client._results import Served, status_name
from mcprouter.client._sync import SyncRouterClient
from mcprouter.v1.events_pb2 import (
    Analytics,
    Event,
    EventMetrics,
    EventOutcome,
    TrackEventsResult,
    VariantAnalytics,
)
from mcprouter.v1.experiment_pb2 import (
    Assignment,
    Experiment,
    ExperimentStatus,
    UserProfile,
    Variant,
)
from mcprouter.v1.router_service_pb2 import (
    CachedEntry,
    DataTypeStats,
    GetCachedResponse,
    StatsResponse,
)
from mcprouter.v1.search_pb2 import (
    EmbeddingItem,
    FilterOperator,
    MetadataCondition,
    MetadataFilter,
    MetadataValue,
    SearchHit,
    SearchResult,
    UpsertEmbeddingsResult,
)
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

__all__ = [
    "ERROR_DOMAIN",
    "IDEMPOTENT_METHODS",
    "Aborted",
    "AlreadyExists",
    "Analytics",
    "Assignment",
    "CachedEntry",
    "DataType",
    "DataTypeStats",
    "DeadlineExceeded",
    "EmbeddingItem",
    "Event",
    "EventMetrics",
    "EventOutcome",
    "Experiment",
    "ExperimentStatus",
    "FailedPrecondition",
    "FieldViolation",
    "FilterOperator",
    "GetCachedResponse",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "MetadataCondition",
    "MetadataFilter",
    "MetadataValue",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "RouterClient",
    "RouterError",
    "SearchHit",
    "SearchResult",
    "ServeStatus",
    "Served",
    "StatsResponse",
    "SyncRouterClient",
    "TlsConfig",
    "TrackEventsResult",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UpsertEmbeddingsResult",
    "UserProfile",
    "Variant",
    "VariantAnalytics",
    "current_hour",
    "error_class",
    "from_rpc_error",
    "service_config",
    "status_name",
    "today",
]
