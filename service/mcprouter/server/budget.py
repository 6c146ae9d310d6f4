"""The caller's time budget, carried from the edge down to every store call.

``grpc.aio`` does not pass a deadline downstream by itself (grpc #25719). The
edge (``edge/deadlines.py``) records the *absolute* deadline of a
call (``time.monotonic()`` based) in a context variable when the call starts;
store and Redis calls bound their own timeouts with ``remaining()``, so a call
past its deadline leaves no query running. Nothing here knows gRPC.

The deadline binds the task it was set in only. asyncio copies the context
into every task a handler starts, but those tasks are not the call's work: a
follow-up after a committed write must outlive the call, and a single-flight
load is shared with every other caller of the key (its waiters may have
longer deadlines), so both keep their stores' own bounds. A task that does
the call's own work on its behalf (a write shielded from the call's
cancellation) adopts it explicitly with ``set_deadline(current())``.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import Any, overload

# (the task the deadline belongs to, the deadline on the time.monotonic() clock)
_DEADLINE: ContextVar[tuple[asyncio.Task[Any] | None, float] | None] = ContextVar(
    "mcprouter_deadline", default=None
)

# Store calls end this much before the caller's deadline. At the deadline
# itself gRPC cancels the call's task; a store client interrupted by that
# cancellation in mid-protocol (asyncpg between Bind and Sync) can leave its
# server session waiting on the client, while its own timeout firing first
# cancels the query cleanly and returns the connection intact.
STORE_DEADLINE_MARGIN_S = 0.05


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None


def current() -> float | None:
    """The absolute deadline (``time.monotonic()`` clock) of this task's call, if any."""
    state = _DEADLINE.get()
    if state is None or state[0] is not _task():
        return None
    return state[1]


def set_deadline(deadline: float | None) -> None:
    """Give the current task an absolute deadline (``time.monotonic()``; ``None``: none)."""
    _DEADLINE.set(None if deadline is None else (_task(), deadline))


def set_timeout(seconds: float | None) -> None:
    """Give the current task a deadline ``seconds`` from now (``None``: none).

    Used by the edge, and by tests and tools that call stores directly.
    """
    set_deadline(None if seconds is None else time.monotonic() + seconds)


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


# Timers may fire a clock tick early; a budget this close to empty is spent.
_SPENT_S = 0.002


def spent() -> bool:
    """Whether this task's call has a deadline and its store budget is used up.

    A store or Redis call that timed out while this holds was cut by the
    caller's deadline, not by a slow backend: the answer is DEADLINE_EXCEEDED,
    and no breaker or outage counter should hear of it.
    """
    deadline = current()
    return (
        deadline is not None and deadline - time.monotonic() - STORE_DEADLINE_MARGIN_S <= _SPENT_S
    )
