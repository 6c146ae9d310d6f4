"""ClickHouse driver failures become the exception tree once, at the store's boundary."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from mcprouter.server import budget
from mcprouter.server.clickhouse.failures import translate
from mcprouter.server.errors import Unavailable


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("Error executing HTTP request"),
        ConnectionRefusedError(111, "Connection refused"),
        DatabaseError("Query was cancelled. (QUERY_WAS_CANCELLED)", code=394),
        DatabaseError("Memory limit exceeded", code=241),
        DatabaseError("Too many parts", code=252),
    ],
)
def test_a_store_that_is_down_or_busy_is_unavailable(exc: Exception) -> None:
    mapped = translate(exc)
    assert isinstance(mapped, Unavailable)
    assert mapped.metadata == {"store": "clickhouse"}


@pytest.mark.parametrize(
    "exc",
    [
        DatabaseError("Unknown table expression identifier 'nope'", code=60),
        ProgrammingError("wrong number of parameters"),
        ValueError("a bug"),
    ],
)
def test_a_bug_stays_what_it_is(exc: Exception) -> None:
    assert translate(exc) is exc


async def test_a_timeout_is_the_stores_own_until_the_callers_deadline_passed() -> None:
    own = translate(DatabaseError("Timeout exceeded", code=159))
    assert isinstance(own, Unavailable) and own.reason == "STORE_TIMEOUT"
    budget.set_timeout(0.0)
    try:
        assert isinstance(translate(DatabaseError("Timeout exceeded", code=159)), TimeoutError)
        assert isinstance(translate(TimeoutError()), TimeoutError)
    finally:
        budget.set_timeout(None)
