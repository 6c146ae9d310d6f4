"""``Served``: the typed value of a ``RouteData`` answer with how it was served."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf.message import Message

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.serve_status_pb2 import ServeStatus

T = TypeVar("T", bound=Message)

_PREFIX = "SERVE_STATUS_"


def status_name(status: ServeStatus.ValueType) -> str:
    """The short name of a serve status: ``"CACHED"``, ``"FRESH"``, ``"DUPLICATE"``..."""
    return ServeStatus.Name(status).removeprefix(_PREFIX)


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    """One ``RouteData`` answer: the typed value and how the server produced it.

    Attributes:
        value: The answer, a generated message (``Experiment``,
            ``Assignment``, ``SearchResult``, ``TrackEventsResult``...).
        status: ``ServeStatus.SERVE_STATUS_CACHED``, ``_FRESH``, ``_STALE``
            for reads; ``_STORED`` for writes.
        cache_key: The key the answer is cached under (without the server's
            namespace); ``""`` for writes.
        stored_at: When the value was read from its store (the age of a
            cached entry), or ``None`` when the server did not say.

    Example:
        >>> served = await client.get_experiment("checkout-v2")
        >>> served.status_name, served.cache_key, served.value.name
        ('CACHED', 'experiment:checkout-v2', 'Checkout v2')
    """

    value: T
    status: ServeStatus.ValueType
    cache_key: str
    stored_at: datetime | None

    @property
    def status_name(self) -> str:
        """``"CACHED"``, ``"FRESH"``, ``"STALE"``, ``"STORED"``..."""
        return status_name(self.status)

    @property
    def from_cache(self) -> bool:
        """True when the store was not queried (``CACHED`` or ``STALE``)."""
        return self.status in (ServeStatus.SERVE_STATUS_CACHED, ServeStatus.SERVE_STATUS_STALE)


def served(response: rs.RouteDataResponse, value: T) -> Served[T]:
    """Wrap ``value`` (a field of ``response``) with the response's status and key."""
    stored_at = (
        response.stored_at.ToDatetime(tzinfo=UTC) if response.HasField("stored_at") else None
    )
    return Served(value, response.status, response.cache_key, stored_at)
