"""Bearer-token authentication of service-to-service calls.

``BearerAuth`` (a ``wrapping.Layer``) accepts a call when its ``authorization`` metadata is
``Bearer <token>`` for one of the configured tokens. Each presented token is
compared with every configured one through ``hmac.compare_digest`` (constant
time per comparison, and no early exit across tokens), so response timing
tells an attacker nothing about how much of a guess was right. Tokens are
never logged, not even the presented ones.

Methods listed as exempt (health and reflection by default, so probes and
``grpcurl list`` work) skip the check. A missing or bad token is
UNAUTHENTICATED with an ``ErrorInfo`` (reason ``MISSING_BEARER_TOKEN`` or
``INVALID_BEARER_TOKEN``); the request body of a refused call is never
deserialized (the layer takes the raw bytes and deserializes them once the
token checks out).
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from mcprouter.server.edge.status import to_rpc_status
from mcprouter.server.errors import Unauthenticated

log = logging.getLogger(__name__)

_SCHEME = b"bearer "

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Context = grpc.aio.ServicerContext[Any, Any]


def method_matches(method: str, patterns: Sequence[str]) -> bool:
    """Whether ``method`` (``/pkg.Service/Method``) is listed, exactly or as ``/pkg.Service/*``."""
    for pattern in patterns:
        if pattern.endswith("/*"):
            if method.startswith(pattern[:-1]):
                return True
        elif method == pattern:
            return True
    return False


def _presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
            if raw[: len(_SCHEME)].lower() == _SCHEME:
                return raw[len(_SCHEME) :].strip()
            return b""
    return None


class BearerAuth:
    """Refuses calls without a valid bearer token, except for exempt methods.

    Attributes:
        refused: Calls refused so far (for metrics).
    """

    def __init__(self, tokens: Sequence[str], exempt_methods: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        if any(not t or t != t.strip() for t in tokens):
            raise ValueError("tokens must be non-empty and have no surrounding whitespace")
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        self._exempt = tuple(exempt_methods)
        self._missing = to_rpc_status(
            Unauthenticated(
                "this method needs 'authorization: Bearer <token>' metadata",
                reason="MISSING_BEARER_TOKEN",
            )
        )
        self._invalid = to_rpc_status(
            Unauthenticated("the bearer token is not valid", reason="INVALID_BEARER_TOKEN")
        )
        self.refused = 0

    def wrap(self, handler: Handler, method: str) -> Handler:
        """Exempt methods pass; any other checks the token before its request is parsed."""
        if method_matches(method, self._exempt):
            return handler
        deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
        checked = self._checked(method, deserialize)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                checked(handler.unary_unary),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                checked(handler.unary_stream),
                response_serializer=handler.response_serializer,
            )
        # A client stream: each message is parsed by the handler's own
        # deserializer, and none is read before the check.
        streamed = self._checked(method, None)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                streamed(handler.stream_unary),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            streamed(handler.stream_stream),
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

    def _checked(
        self, method: str, deserialize: Callable[[bytes], Any] | None
    ) -> Callable[[Any], Any]:
        async def refuse_unless_valid(context: Context) -> None:
            presented = _presented_token(context.invocation_metadata())
            if presented and self._valid(presented):
                return
            self.refused += 1
            log.info("refused %s: %s bearer token", method, "no" if presented is None else "bad")
            status = self._missing if presented is None else self._invalid
            await context.abort(status.code, status.details, status.trailing_metadata)

        def around(behavior: Any) -> Any:
            async def checked(request: Any, context: Context) -> Any:
                await refuse_unless_valid(context)
                if deserialize is not None:
                    request = deserialize(request)
                result = behavior(request, context)
                if inspect.isasyncgen(result):  # a streaming response written as it comes
                    async for message in result:
                        await context.write(message)
                    return None
                return await result

            return checked

        return around

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for token in self._tokens:
            # No short-circuit: every configured token is compared.
            ok |= hmac.compare_digest(presented, token)
        return ok
