"""One building block for our server interceptors: wrap a method's unary behavior once.

Each interceptor (telemetry, auth refusals aside, the in-flight bound, error
translation, deadlines) wraps the unary-unary behavior of a method. Building a
new ``RpcMethodHandler`` per call showed up in profiles of the cache-hit path,
so ``WrappedHandlers`` builds it once per method and reuses it while the
underlying handler is the same object. Other handler shapes (health ``Watch``,
reflection streams) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]


class WrappedHandlers:
    """Per-method cache of unary handlers wrapped by ``wrap(behavior, method)``."""

    def __init__(self, wrap: Callable[[Behavior, str], Behavior]) -> None:
        self._wrap = wrap
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def wrapped(self, handler: Handler, method: str) -> Handler:
        """The wrapped form of ``handler`` (itself if it is not unary-unary, or None)."""
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._cache[method] = (handler, wrapped)
        return wrapped
