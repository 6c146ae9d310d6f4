"""The Router: picks the processor that owns an operation's data.

Processors register one handler per ``RouteDataRequest.operation`` case. An
operation whose processor is not part of this server answers UNIMPLEMENTED
with a message naming the missing processor, so a client can tell "not
built/configured here" from "bad input".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import Message

from mcprouter.server.errors import Unimplemented
from mcprouter.v1.serve_status_pb2 import ServeStatus


@dataclass(frozen=True, slots=True)
class RouteResult:
    """A processor's answer, before it becomes a ``RouteDataResponse``."""

    status: ServeStatus.ValueType
    result_field: str  # name of the field in RouteDataResponse.result
    value: Message
    cache_key: str = ""
    stored_at: datetime | None = None


Handler = Callable[[Any], Awaitable[RouteResult]]

# Which processor owns each operation; used to explain UNIMPLEMENTED.
OWNERS: dict[str, str] = {
    "get_experiment": "postgres",
    "get_assignment": "postgres",
    "get_user_profile": "postgres",
    "upsert_experiment": "postgres",
    "upsert_user_profile": "postgres",
    "get_event_metrics": "clickhouse",
    "get_analytics": "clickhouse",
    "track_events": "clickhouse",
    "semantic_search": "chroma",
    "upsert_embeddings": "chroma",
}


class Router:
    """Dispatches a validated operation to its handler."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        unknown = set(handlers) - set(OWNERS)
        if unknown:
            raise ValueError(f"handlers for unknown operations: {sorted(unknown)}")
        self._handlers = dict(handlers)

    @property
    def operations(self) -> frozenset[str]:
        """The operations this router can serve."""
        return frozenset(self._handlers)

    async def route(self, operation: str, message: Message) -> RouteResult:
        """Run ``operation`` (a oneof case name) with its message."""
        handler = self._handlers.get(operation)
        if handler is None:
            owner = OWNERS[operation]
            raise Unimplemented(
                f"{operation} is served by the {owner} processor, which is not available "
                "in this server yet",
                metadata={"operation": operation, "processor": owner},
            )
        return await handler(message)
