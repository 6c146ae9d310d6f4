"""The gRPC edge of the time budget: each call's deadline, recorded for ``budget``.

``DeadlineInterceptor`` reads ``context.time_remaining()`` when a call starts
and records it with ``budget.set_timeout``; store calls bound their timeouts
with ``budget.remaining()`` (see ``budget`` for which tasks it binds).

A store call cut short by the deadline raises ``TimeoutError``; the
interceptor turns one that escapes the handler after the deadline into
``DeadlineExceeded`` (DEADLINE_EXCEEDED with an ``ErrorInfo``) instead of an
INTERNAL "bug". Place it inside ``ErrorTranslationInterceptor``. (The client
sees DEADLINE_EXCEEDED from its own gRPC runtime either way.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from mcprouter.server.budget import remaining, set_timeout
from mcprouter.server.errors import RouterError
from mcprouter.server.grpc_wrapping import Behavior, Continuation, WrappedHandlers

if TYPE_CHECKING:
    from mcprouter.server.grpc_wrapping import Handler


class DeadlineExceeded(RouterError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


def _with_deadline(behavior: Behavior) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The wrapper runs in the call's own task, so the value set here is
        # seen by this call (and the tasks it starts) only.
        set_timeout(context.time_remaining())
        try:
            return await behavior(request, context)
        except TimeoutError as exc:
            if remaining(1.0) > 0.0:
                raise  # a store's own timeout, not the caller's deadline
            raise DeadlineExceeded(
                "the call's deadline passed before it was done; no work is left running"
            ) from exc

    return wrapper


class DeadlineInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Records each unary call's deadline for ``remaining()``.

    Wrapped handlers are built once per method and reused (as in
    ``ErrorTranslationInterceptor``), so the per-call cost is one
    ``time_remaining()`` and one context-variable set.
    """

    def __init__(self) -> None:
        self._handlers = WrappedHandlers(lambda behavior, _method: _with_deadline(behavior))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Wrap the method's unary handler so it runs under the caller's deadline."""
        handler = await continuation(handler_call_details)
        return self._handlers.wrapped(handler, handler_call_details.method)
