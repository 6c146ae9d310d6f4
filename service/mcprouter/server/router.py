"""The Router: hands a validated operation to the processor that owns its data.

Processors register one handler per ``Operation`` (``operations.py``). An
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
from mcprouter.server.operations import Operation
from mcprouter.v1.serve_status_pb2 import ServeStatus


@dataclass(frozen=True, slots=True)
class RouteResult:
    """A processor's answer, before it becomes a ``RouteDataResponse``.

    The response field it goes in is the operation's ``result_field``.
    """

    status: ServeStatus.ValueType
    value: Message
    cache_key: str = ""
    stored_at: datetime | None = None


Handler = Callable[[Any], Awaitable[RouteResult]]
Handlers = Mapping[Operation, Handler]


class Router:
    """Dispatches a validated operation to its handler."""

    def __init__(self, *handler_maps: Handlers) -> None:
        handlers: dict[Operation, Handler] = {}
        for mapping in handler_maps:
            if twice := handlers.keys() & mapping.keys():
                raise ValueError(f"operations served twice: {sorted(o.name for o in twice)}")
            handlers.update(mapping)
        self._handlers = handlers

    @property
    def operations(self) -> frozenset[str]:
        """Names of the operations this router can serve."""
        return frozenset(op.name for op in self._handlers)

    async def route(self, operation: Operation, message: Message) -> RouteResult:
        """Run ``operation`` with its message."""
        handler = self._handlers.get(operation)
        if handler is None:
            raise Unimplemented(
                f"{operation.name} is served by the {operation.owner} processor, which is not "
                "available in this server",
                metadata={"operation": operation.name, "processor": operation.owner},
            )
        return await handler(message)
