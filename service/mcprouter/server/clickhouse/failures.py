"""ClickHouse's failures, translated once, at the store's boundary, reads and writes alike.

| raised by clickhouse-connect / chDB / the socket              | becomes               |
|----------------------------------------------------------------|-----------------------|
| ``OperationalError``: connection refused, reset or timed out,  | ``Unavailable``       |
| a stream cut, an HTTP 502/503/504 after its retries            |                       |
| ``OSError``; the store closed (shutting down)                  | ``Unavailable``       |
| a server error whose code says "busy, short of resources, or   | ``Unavailable``       |
| the query was cut": TIMEOUT_EXCEEDED, QUERY_WAS_CANCELLED,     |                       |
| TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, ...       |                       |
| TIMEOUT_EXCEEDED or ``TimeoutError`` once the caller's         | ``TimeoutError`` (the |
| deadline has passed                                            | edge: DEADLINE_EXCEEDED) |
| anything else (a bug: bad SQL, unknown table, wrong types)     | unchanged (INTERNAL)  |

``Unavailable`` (``metadata["store"] == "clickhouse"``) tells the cache core
to serve a stale copy if it has one and tells a client to retry. For an
insert it means the outcome is unknown (a timed-out HTTP insert may have
landed): ingestion releases the events' dedup records and the client resends
them; the ``ReplacingMergeTree`` keyed by event id collapses a second copy.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from mcprouter.server import budget
from mcprouter.server.errors import Unavailable

STORE = {"store": "clickhouse"}
TIMEOUT_EXCEEDED = 159
# Server error codes of a ClickHouse that is overloaded, restarting or cut
# the query short: retrying later can succeed (ClickHouse's ErrorCodes.cpp).
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED (the store's own bound)
        160,  # TOO_SLOW
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (a replica lost its keeper session)
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


def _deadline_passed() -> bool:
    return budget.spent()


def translate(exc: BaseException) -> BaseException:
    """The exception of the tree that stands for a driver failure (or ``exc`` itself)."""
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, DatabaseError) and exc.code == TIMEOUT_EXCEEDED
    ):
        if _deadline_passed():
            return TimeoutError("the caller's deadline passed during a ClickHouse call")
        return Unavailable(
            "ClickHouse did not answer in time; retry", reason="STORE_TIMEOUT", metadata=STORE
        )
    if isinstance(exc, OperationalError | OSError) or (
        isinstance(exc, DatabaseError) and exc.code in TRANSIENT_CODES
    ):
        return Unavailable(
            f"ClickHouse is unavailable ({type(exc).__name__}: {_first_line(exc)}); retry",
            metadata=STORE,
        )
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
