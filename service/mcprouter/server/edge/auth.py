"""Bearer-token authentication of service-to-service calls.

``AuthInterceptor`` accepts a call when its ``authorization`` metadata is
``Bearer <token>`` for one of the configured tokens. Each presented token is
compared with every configured one through ``hmac.compare_digest`` (constant
time per comparison, and no early exit across tokens), so response timing
tells an attacker nothing about how much of a guess was right. Tokens are
never logged, not even the presented ones.

Methods listed as exempt (health and reflection by default, so probes and
``grpcurl list`` work) skip the check. A missing or bad token is
UNAUTHENTICATED with an ``ErrorInfo`` (reason ``MISSING_BEARER_TOKEN`` or
``INVALID_BEARER_TOKEN``); the request body of a refused call is never
deserialized.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from mcprouter.server.edge.status import to_rpc_status
from mcprouter.server.errors import RouterError, Unauthenticated

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


def _presented_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
            if raw[: len(_SCHEME)].lower() == _SCHEME:
                return raw[len(_SCHEME) :].strip()
            return b""
    return None


def _rejecting_handlers(error: RouterError) -> dict[str, Handler]:
    """One prebuilt refusing handler per RPC shape (no request deserializer)."""
    status = to_rpc_status(error)

    async def refuse(_request: Any, context: Context) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return {
        "unary_unary": grpc.unary_unary_rpc_method_handler(refuse),
        "unary_stream": grpc.unary_stream_rpc_method_handler(refuse),
        "stream_unary": grpc.stream_unary_rpc_method_handler(refuse),
        "stream_stream": grpc.stream_stream_rpc_method_handler(refuse),
    }


def _shape(handler: Handler) -> str:
    if handler.unary_unary is not None:
        return "unary_unary"
    if handler.unary_stream is not None:
        return "unary_stream"
    if handler.stream_unary is not None:
        return "stream_unary"
    return "stream_stream"


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a valid bearer token, except for exempt methods.

    Attributes:
        refused: Calls refused so far (for metrics).
    """

    def __init__(self, tokens: Sequence[str], exempt_methods: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        if any(not t or t != t.strip() for t in tokens):
            raise ValueError("tokens must be non-empty and have no surrounding whitespace")
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        self._exempt = tuple(exempt_methods)
        self._missing = _rejecting_handlers(
            Unauthenticated(
                "this method needs 'authorization: Bearer <token>' metadata",
                reason="MISSING_BEARER_TOKEN",
            )
        )
        self._invalid = _rejecting_handlers(
            Unauthenticated("the bearer token is not valid", reason="INVALID_BEARER_TOKEN")
        )
        self.refused = 0

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for token in self._tokens:
            # No short-circuit: every configured token is compared.
            ok |= hmac.compare_digest(presented, token)
        return ok

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Pass an authenticated or exempt call on; refuse any other."""
        method = handler_call_details.method
        if method_matches(method, self._exempt):
            return await continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented and self._valid(presented):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: UNIMPLEMENTED, as without auth
        self.refused += 1
        log.info("refused %s: %s bearer token", method, "no" if presented is None else "bad")
        table = self._missing if presented is None else self._invalid
        return table[_shape(handler)]
