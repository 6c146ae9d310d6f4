"""PostgreSQL's failures, translated once, at the store's boundary, reads and writes alike.

| raised by asyncpg / the socket                               | becomes             |
|--------------------------------------------------------------|---------------------|
| connection refused, reset or lost; pool or connection closed | ``Unavailable``     |
| server shutting down, too many connections, out of resources | ``Unavailable``     |
| a statement timeout or cancel (the store's own bound)        | ``Unavailable``     |
| ``TimeoutError`` once the caller's deadline has passed       | unchanged (the edge |
|                                                              | answers DEADLINE_EXCEEDED) |
| serialization failure, deadlock                              | ``Aborted`` (retry) |
| anything else (a bug: bad SQL, wrong arguments)              | unchanged (INTERNAL)|

``Unavailable`` tells the cache core to serve a stale copy if it has one and
tells a client to retry; for a write it means the outcome is unknown (the
statement may have committed before the connection broke), which is why
writes still invalidate after it (``writes.Writes``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg

from mcprouter.server import budget
from mcprouter.server.errors import Aborted, Unavailable

P = ParamSpec("P")
T = TypeVar("T")

_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, query canceled
)
_CONFLICT = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


def translate(exc: BaseException) -> BaseException:
    """The exception of the tree that stands for a driver failure (or ``exc`` itself)."""
    if isinstance(exc, TimeoutError):
        if budget.remaining(1.0) == 0.0:
            return exc  # the caller's deadline, not PostgreSQL
        return Unavailable("PostgreSQL did not answer in time; retry", reason="STORE_TIMEOUT")
    if isinstance(exc, _CONFLICT):
        return Aborted(
            f"PostgreSQL aborted the statement ({type(exc).__name__}); retry",
            reason="STORE_CONFLICT",
        )
    if isinstance(exc, _DOWN):
        return Unavailable(
            f"PostgreSQL is unavailable ({type(exc).__name__}: {exc}); retry",
            metadata={"store": "postgres"},
        )
    return exc


def translated(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a store method so driver failures leave it as the exception tree."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            mapped = translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    return wrapper
