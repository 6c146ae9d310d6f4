"""The server's own bound on in-flight RPCs.

``grpc.aio.server(maximum_concurrent_rpcs=...)`` alone has been bypassable
(grpc #41531), and it refuses without a rich status. ``InFlightLimiter``
counts the unary calls being handled and refuses one beyond the bound at
once with RESOURCE_EXHAUSTED (reason ``TOO_MANY_IN_FLIGHT_RPCS``): a server
that is already saturated gains nothing from queueing more work, and a
client can retry elsewhere. Everything runs on the event loop thread, so a
plain integer is the whole semaphore.

Health checks are not counted (a saturated instance must still answer its
probes), and streaming methods (health ``Watch``, reflection) do no store
work, so they pass unbounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from mcprouter.server.edge.auth import method_matches
from mcprouter.server.edge.status import to_rpc_status
from mcprouter.server.edge.wrapping import Behavior, with_unary
from mcprouter.server.errors import ResourceExhausted

if TYPE_CHECKING:
    from mcprouter.server.edge.wrapping import Handler

UNBOUNDED_METHODS = ("/grpc.health.v1.Health/*",)


class InFlightLimiter:
    """A ``wrapping.Layer`` that refuses unary calls beyond ``limit`` running at once.

    Attributes:
        refused: Calls refused so far (for metrics).
    """

    def __init__(self, limit: int, *, unbounded: Sequence[str] = UNBOUNDED_METHODS) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._unbounded = tuple(unbounded)
        self._in_flight = 0
        self.refused = 0
        self._status = to_rpc_status(
            ResourceExhausted(
                f"the server is handling its maximum of {limit} calls; retry with backoff",
                reason="TOO_MANY_IN_FLIGHT_RPCS",
                metadata={"limit": str(limit)},
            )
        )

    @property
    def in_flight(self) -> int:
        """Unary calls being handled now (for metrics)."""
        return self._in_flight

    def _bounded(self, behavior: Behavior) -> Behavior:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self._in_flight >= self.limit:
                self.refused += 1
                status = self._status
                await context.abort(status.code, status.details, status.trailing_metadata)
            self._in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self._in_flight -= 1

        return wrapper

    def wrap(self, handler: Handler, method: str) -> Handler:
        """Bound the method's unary calls; streams and health checks pass."""
        if handler.unary_unary is None or method_matches(method, self._unbounded):
            return handler
        return with_unary(handler, self._bounded(handler.unary_unary))  # type: ignore[arg-type]
