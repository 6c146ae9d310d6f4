"""The ClickHouse store's boundary on real clients: failures leave it as the exception tree.

Path 7 of the consistency issue: an HTTP ClickHouse that is down (a port
nothing listens on) must not stop the store from opening, and every call
then fails ``Unavailable`` (UNAVAILABLE on the wire), never a raw driver
error (INTERNAL). A query ClickHouse itself cancels is ``Unavailable`` too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from mcprouter.server import errors
from mcprouter.server.clickhouse.store import ClickHouseStore, open_clickhouse
from mcprouter.v1.events_pb2 import Event


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def an_event() -> Event:
    e = Event(event_id="ev-1", experiment_id="x", user_id="u", variant="v", event_type="click")
    e.timestamp.FromDatetime(datetime.now(UTC))
    return e


async def test_path7_an_http_clickhouse_down_at_start_up_opens_and_answers_unavailable() -> None:
    store = await open_clickhouse(f"http://127.0.0.1:{closed_port()}", connect_timeout_s=1.0)
    try:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        with pytest.raises(errors.Unavailable) as caught:
            await store.hour_metrics("x", "v", "click", hour)
        assert caught.value.metadata.get("store") == "clickhouse"
        with pytest.raises(errors.Unavailable):
            await store.insert_events([an_event()])
        with pytest.raises(errors.Unavailable):
            await store.ping()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb-store") / "clickhouse"


@pytest.fixture(scope="module")
async def store(chdb_path: Path) -> AsyncIterator[ClickHouseStore]:
    store = await open_clickhouse(f"chdb://{chdb_path}")
    await store.migrate()
    yield store
    await store.close()


async def test_path7_a_query_clickhouse_cancels_is_unavailable(
    store: ClickHouseStore, chdb_path: Path
) -> None:
    started = threading.Event()

    def slow(client: Any) -> None:
        started.set()
        client.query(
            "SELECT sleepEachRow(0.5) /* store-cancel */ FROM numbers(30)",
            settings={"max_block_size": 1},
        )

    observer = await asyncio.to_thread(clickhouse_connect.get_client, dsn=f"chdb://{chdb_path}")

    def running() -> bool:
        rows = observer.query(
            "SELECT count() FROM system.processes WHERE query LIKE '%store-cancel%' "
            "AND query NOT LIKE '%system.processes%'"
        ).result_rows
        return bool(rows[0][0])

    task = asyncio.create_task(store.run(slow))
    try:
        for _ in range(1000):
            if started.is_set() and await asyncio.to_thread(running):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the slow query never ran")
    finally:
        await asyncio.to_thread(
            observer.command,
            "KILL QUERY WHERE query LIKE '%store-cancel%' AND query NOT LIKE '%KILL%' SYNC",
        )
        await asyncio.to_thread(observer.close)
    with pytest.raises(errors.Unavailable) as caught:
        await task
    assert caught.value.metadata.get("store") == "clickhouse"
    await store.ping()  # the store itself is fine afterwards


async def test_reads_run_side_by_side_on_the_query_lane_each_on_its_own_client(
    store: ClickHouseStore, chdb_path: Path
) -> None:
    """Two slow reads are in ClickHouse at the same time (two workers, two chDB
    handles); neither waits for the other."""

    def slow(client: Any) -> None:
        client.query(
            "SELECT sleepEachRow(0.5) /* side-by-side */ FROM numbers(30)",
            settings={"max_block_size": 1},
        )

    observer = await asyncio.to_thread(clickhouse_connect.get_client, dsn=f"chdb://{chdb_path}")

    def running() -> int:
        rows = observer.query(
            "SELECT count() FROM system.processes WHERE query LIKE '%side-by-side%' "
            "AND query NOT LIKE '%system.processes%'"
        ).result_rows
        return int(rows[0][0])

    tasks = [asyncio.create_task(store.run(slow)) for _ in range(2)]
    try:
        for _ in range(1000):
            if await asyncio.to_thread(running) == 2:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the two reads never ran at the same time")
    finally:
        await asyncio.to_thread(
            observer.command,
            "KILL QUERY WHERE query LIKE '%side-by-side%' AND query NOT LIKE '%KILL%' SYNC",
        )
        await asyncio.to_thread(observer.close)
        await asyncio.gather(*tasks, return_exceptions=True)
