"""The caller's deadline, carried from the gRPC edge down to every store call.

``grpc.aio`` does not pass a deadline downstream by itself (grpc #25719).
``DeadlineInterceptor`` reads ``context.time_remaining()`` when a call starts
and stores the *absolute* deadline (``time.monotonic()`` based) in a
context variable; store calls bound their timeouts with ``remaining()``, so
a call past its deadline leaves no query running.

The deadline binds the call's own task only. asyncio copies the context into
every task a handler starts, but those tasks are not the call's work: a
background invalidation retry must outlive the call, and a single-flight
load is shared with every other caller of the key (its waiters may have
longer deadlines), so both keep their stores' own bounds.

A store call cut short by the deadline raises ``TimeoutError``; the
interceptor turns one that escapes the handler after the deadline into
``DeadlineExceeded`` (DEADLINE_EXCEEDED with an ``ErrorInfo``) instead of an
INTERNAL "bug". Place it inside ``ErrorTranslationInterceptor``. (The client
sees DEADLINE_EXCEEDED from its own gRPC runtime either way.)
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, overload

import grpc

from mcprouter.server.errors import RouterError
from mcprouter.server.grpc_wrapping import Behavior, Continuation, WrappedHandlers

# (the task the deadline belongs to, the deadline on the time.monotonic() clock)
_DEADLINE: ContextVar[tuple[asyncio.Task[Any] | None, float] | None] = ContextVar(
    "mcprouter_deadline", default=None
)

if TYPE_CHECKING:
    from mcprouter.server.grpc_wrapping import Handler


class DeadlineExceeded(RouterError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None


# Store calls end this much before the caller's deadline. At the deadline
# itself gRPC cancels the call's task; a store client interrupted by that
# cancellation in mid-protocol (asyncpg between Bind and Sync) can leave its
# server session waiting on the client, while its own timeout firing first
# cancels the query cleanly and returns the connection intact.
STORE_DEADLINE_MARGIN_S = 0.05


def current() -> float | None:
    """The absolute deadline (``time.monotonic()`` clock) of this task's call, if any."""
    state = _DEADLINE.get()
    if state is None or state[0] is not _task():
        return None
    return state[1]


def set_timeout(seconds: float | None) -> None:
    """Give the current task a deadline ``seconds`` from now (``None``: none).

    Used by the interceptor, and by tests and tools that call stores directly.
    """
    _DEADLINE.set(None if seconds is None else (_task(), time.monotonic() + seconds))


@overload
def remaining(default: float) -> float: ...
@overload
def remaining(default: None) -> float | None: ...
def remaining(default: float | None) -> float | None:
    """The time a store call may take: ``default`` bounded by the call's deadline.

    Args:
        default: The store's own bound in seconds (``None``: unbounded).

    Returns:
        ``default`` when there is no deadline or it is further away, else the
        seconds left (0.0 once it has passed, so the call times out at once).
    """
    deadline = current()
    if deadline is None:
        return default
    left = max(deadline - time.monotonic() - STORE_DEADLINE_MARGIN_S, 0.0)
    return left if default is None else min(default, left)


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
