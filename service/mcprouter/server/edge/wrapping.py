"""The edge's per-call layers, applied once per method when the server is built.

Telemetry, authentication, the in-flight bound, error translation and the
deadline each wrap a method's handler. They used to be ``grpc.aio``
interceptors, and interceptors cost every call: each one's
``intercept_service`` coroutine runs per call (about 8 µs of server CPU per
interceptor per call, measured with no-op interceptors on this machine) and
returns a handler grpc then looks at again. So instead every service is
collected here (``Services`` stands in for the server while the generated
``add_*Servicer_to_server`` functions register), each method's handler is
wrapped by every ``Layer`` once, and the wrapped handlers are registered on
the server as its registered methods: a call costs only the layers' own work.

A ``Layer`` sees the whole handler, so it decides per method at build time
(an exempt method is left alone, a stream passes through) and per call does
only what it must.

A unary request body that is not the method's message does not reach grpc's
own deserialization failure (UNKNOWN, "Unexpected DecodeError"): it becomes a
``Malformed`` request, which ``status`` refuses with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.message import DecodeError

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class Malformed:
    """A request body that did not parse as ``type_name``."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize``, returning ``Malformed`` instead of raising on a corrupt body."""
    message_type = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request")

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return Malformed(type_name)

    return parse


class Layer(Protocol):
    """Wraps the handler of one method (``/package.Service/Method``)."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        """The handler calls of ``method`` run through (``handler`` itself to pass)."""


def with_unary(handler: Handler, behavior: Behavior) -> Handler:
    """``handler`` with another unary-unary behavior and the same (de)serializers."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def unary_layer(wrap: Callable[[Behavior, str], Behavior]) -> Layer:
    """A layer that wraps unary-unary behaviors with ``wrap`` and passes streams."""

    class _Unary:
        def wrap(self, handler: Handler, method: str) -> Handler:
            if handler.unary_unary is None:
                return handler
            return with_unary(handler, wrap(handler.unary_unary, method))  # type: ignore[arg-type]

    return _Unary()


class Services:
    """Collects services as the generated ``add_*Servicer_to_server`` register them."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[object]) -> None:
        """Ignored: ``add_registered_method_handlers`` gets the same handlers by name."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        """Keep one service's handlers, by method name."""
        self._services[service] = dict(handlers)

    def install(self, server: grpc.aio.Server, layers: Sequence[Layer]) -> None:
        """Register every service on ``server`` with ``layers`` applied, outermost first."""
        for service, handlers in self._services.items():
            wrapped = {
                name: _layered(handler, f"/{service}/{name}", layers)
                for name, handler in handlers.items()
            }
            generic = grpc.method_handlers_generic_handler(service, wrapped)
            server.add_generic_rpc_handlers((generic,))
            # Looked up by the method's registered name first (the path the
            # generated code takes); the generic handler answers the rest.
            server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]


def _layered(handler: Handler, method: str, layers: Sequence[Layer]) -> Handler:
    if handler.unary_unary is not None and handler.request_deserializer is not None:
        handler = grpc.unary_unary_rpc_method_handler(
            handler.unary_unary,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    for layer in reversed(layers):  # the innermost wraps first
        handler = layer.wrap(handler, method)
    return handler
