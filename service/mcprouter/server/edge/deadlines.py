"""The gRPC edge of the time budget: each call's deadline, recorded for ``budget``.

``DEADLINES`` (a ``wrapping.Layer``) reads ``context.time_remaining()`` when a call starts
and records it with ``budget.set_timeout``; store calls bound their timeouts
with ``budget.remaining()`` (see ``budget`` for which tasks it binds).

A store call cut short by the deadline raises ``TimeoutError``; the
layer turns one that escapes the handler after the deadline into
``DeadlineExceeded`` (DEADLINE_EXCEEDED with an ``ErrorInfo``) instead of an
INTERNAL "bug". Place it inside ``status.ERROR_TRANSLATION``. (The client
sees DEADLINE_EXCEEDED from its own gRPC runtime either way.)
"""

from __future__ import annotations

from typing import Any

import grpc

from mcprouter.server.budget import set_timeout, spent
from mcprouter.server.edge.wrapping import Behavior, unary_layer
from mcprouter.server.errors import DeadlineExceeded


def _with_deadline(behavior: Behavior) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The wrapper runs in the call's own task, so the value set here is
        # seen by this call (and the tasks it starts) only.
        set_timeout(context.time_remaining())
        try:
            return await behavior(request, context)
        except TimeoutError as exc:
            if not spent():
                raise  # a store's own timeout, not the caller's deadline
            raise DeadlineExceeded(
                "the call's deadline passed before it was done; no work is left running"
            ) from exc

    return wrapper


# Per call: one ``time_remaining()`` and one context-variable set.
DEADLINES = unary_layer(lambda behavior, _method: _with_deadline(behavior))
