"""ClickHouse store: raw events in, hourly and daily aggregates out.

Knows SQL and protobuf, nothing about caching, dedup records or gRPC.

Calls run on two lanes of worker threads (``lanes``), each worker with a
clickhouse-connect client of its own (the client is synchronous, chDB has no
async client, and one client must never run two queries at once,
clickhouse-connect #295): inserts on a lane of one worker, reads on a lane of
``query_workers``. So a long analytics query never delays an insert, and so
never delays the acknowledgement of events; and one slow query does not hold
every other read. See ``lanes`` for what chDB allows.

Nothing connects at start-up: each worker makes its client on first use and
again after a transport failure, so the service starts with ClickHouse down
(every call is then ``Unavailable`` and the health probe says so) and picks
it up by itself when it answers. A store opened with ``migrate=True`` applies
pending schema migrations before its first call, whenever that succeeds.

Queries bind every value server-side (``{name:Type}`` placeholders with
``parameters=``); table and column names are module constants, never input.

Reads use ``FINAL``: ReplacingMergeTree collapses copies of an event only when
parts merge, which happens in the background at an unknown time, and
``FINAL`` merges at read time, so counts and sums are exact even before that.
Measured on this machine it costs nothing visible on a million rows (the
sorting key already groups an experiment's hours together), and unlike
``uniqExact(event_id)`` it also keeps ``sum(value)`` exact.

Failures leave the store translated into the exception tree (``failures``):
a ClickHouse that is down, overloaded or cut the query short is
``Unavailable`` for reads and writes alike (the cache core then serves a stale
copy if it has one, ingestion releases its dedup records); a call past the
caller's deadline is ``TimeoutError``; a bug stays what it is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from mcprouter.server.budget import remaining
from mcprouter.server.clickhouse.failures import translate
from mcprouter.server.clickhouse.host_client import SCHEME as HOST_SCHEME
from mcprouter.server.clickhouse.host_client import HostClient
from mcprouter.server.clickhouse.lanes import Lane
from mcprouter.server.clickhouse.schema import apply_clickhouse_migrations
from mcprouter.server.errors import StoreClosed
from mcprouter.v1.events_pb2 import Event, EventMetrics

T = TypeVar("T")
log = logging.getLogger(__name__)

EVENTS_TABLE = "events"
PING_FRESH_S = 2.0
EVENT_COLUMNS = (
    "event_id",
    "experiment_id",
    "variant",
    "user_id",
    "event_type",
    "value",
    "timestamp",
)
_TS = "DateTime64(3, 'UTC')"
_HOUR_METRICS = f"""
SELECT count(), sum(value), uniqExact(user_id)
FROM {EVENTS_TABLE} FINAL
WHERE experiment_id = {{experiment_id:String}}
  AND timestamp >= {{start:{_TS}}} AND timestamp < {{end:{_TS}}}
  AND variant = {{variant:String}} AND event_type = {{metric:String}}
"""
_DAY_COUNTS = f"""
SELECT variant,
       uniqExact(user_id),
       uniqExactIf(user_id, event_type = {{conversion:String}}),
       sumIf(value, event_type = {{conversion:String}})
FROM {EVENTS_TABLE} FINAL
WHERE experiment_id = {{experiment_id:String}}
  AND timestamp >= {{start:{_TS}}} AND timestamp < {{end:{_TS}}}
GROUP BY variant
ORDER BY variant
"""
_COUNT_EXPERIMENT = f"""
SELECT count() FROM {EVENTS_TABLE} FINAL WHERE experiment_id = {{experiment_id:String}}
"""

_RECENT_EVENT_IDS = f"""
SELECT DISTINCT event_id FROM {EVENTS_TABLE}
WHERE inserted_at >= now64(3) - toIntervalMillisecond({{window_ms:UInt64}})
"""


@dataclass(frozen=True, slots=True)
class VariantCounts:
    """One variant's raw figures for one day (the input of the statistics)."""

    variant: str
    exposed_users: int
    converting_users: int
    total_value: float


def _event_columns(events: Sequence[Event]) -> list[list[Any]]:
    """Column-oriented insert data; timestamps as integer milliseconds."""
    return [
        [e.event_id for e in events],
        [e.experiment_id for e in events],
        [e.variant for e in events],
        [e.user_id for e in events],
        [e.event_type for e in events],
        [e.value for e in events],
        # DateTime64(3) ticks: the exact millisecond, with no datetime objects.
        [e.timestamp.seconds * 1000 + e.timestamp.nanos // 1_000_000 for e in events],
    ]


class ClickHouseStore:
    """Events in ClickHouse, through an insert lane and a query lane.

    Attributes:
        queries: Read queries that reached ClickHouse.
        inserts: Insert statements sent (one per group-commit flush).
        inserted_rows: Rows those inserts carried.
    """

    def __init__(
        self, inserts: Lane, queries: Lane, *, migrate: bool = False, embedded: bool = False
    ) -> None:
        """Take ownership of the two lanes; ``close()`` closes them.

        Args:
            inserts: The lane of inserts (and health pings).
            queries: The lane of reads.
            migrate: Apply pending migrations before the first call that needs
                ClickHouse (retried by each call until it succeeded).
            embedded: The engine is this machine's chDB (in-process or the
                workers' host), not a ClickHouse server other machines share.
        """
        self.embedded = embedded
        self._inserts = inserts
        self._queries = queries
        self._unmigrated = migrate
        self._migrating = asyncio.Lock()
        self._closed = False
        self._last_ok = -math.inf
        self.queries = 0
        self.inserts = 0
        self.inserted_rows = 0

    async def run(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(client)`` on the query lane (migrations, tests, benchmarks)."""
        return await self._call(self._queries, fn)

    async def _call(self, lane: Lane, fn: Callable[[Client], T]) -> T:
        """Every call's way in and out: the one place driver failures are translated."""
        try:
            if self._closed:
                raise StoreClosed(
                    "ClickHouse is closing on this instance (shutting down); retry on another",
                    metadata={"store": "clickhouse"},
                )
            if self._unmigrated:
                await self._migrate_once()
            result = await lane.run(fn)
        except Exception as exc:
            mapped = translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        self._last_ok = time.monotonic()
        return result

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the versions applied."""
        self._unmigrated = False
        return await self.run(apply_clickhouse_migrations)

    async def _migrate_once(self) -> None:
        async with self._migrating:  # one migration at a time; the others wait for it
            if self._unmigrated:
                applied = await self._queries.run(apply_clickhouse_migrations)
                self._unmigrated = False
                if applied:
                    log.info("applied ClickHouse migrations: %s", ", ".join(applied))

    async def insert_events(self, events: Sequence[Event]) -> None:
        """Insert events as one block (one part, atomic up to a million rows)."""
        if not events:
            return
        self.inserts += 1

        def insert(client: Client) -> None:
            client.insert(
                EVENTS_TABLE,
                _event_columns(events),
                column_names=list(EVENT_COLUMNS),
                column_oriented=True,
            )

        await self._call(self._inserts, insert)
        self.inserted_rows += len(events)

    async def hour_metrics(
        self, experiment_id: str, variant: str, metric: str, hour: datetime
    ) -> EventMetrics:
        """Count, value sum and distinct users of one metric in one UTC hour."""
        params = {
            "experiment_id": experiment_id,
            "variant": variant,
            "metric": metric,
            "start": hour,
            "end": hour + timedelta(hours=1),
        }
        rows = await self._query(_HOUR_METRICS, params)
        count, total, users = rows[0] if rows else (0, 0.0, 0)
        metrics = EventMetrics(
            experiment_id=experiment_id,
            variant=variant,
            metric=metric,
            count=int(count),
            sum=float(total),
            unique_users=int(users),
        )
        metrics.hour.FromDatetime(hour)
        return metrics

    async def day_counts(
        self, experiment_id: str, day: datetime, conversion_event_type: str
    ) -> list[VariantCounts]:
        """Per variant: exposed users, converting users, conversion value sum."""
        params = {
            "experiment_id": experiment_id,
            "conversion": conversion_event_type,
            "start": day,
            "end": day + timedelta(days=1),
        }
        rows = await self._query(_DAY_COUNTS, params)
        return [VariantCounts(str(v), int(e), int(c), float(t)) for v, e, c, t in rows]

    async def count_events(self, experiment_id: str) -> int:
        """Stored events of an experiment, duplicates collapsed (for checks)."""
        rows = await self._query(_COUNT_EXPERIMENT, {"experiment_id": experiment_id})
        return int(rows[0][0])

    async def recent_event_ids(self, window_s: float) -> list[str]:
        """Ids of the events inserted within the last ``window_s`` seconds (ClickHouse's clock)."""
        rows = await self._query(_RECENT_EVENT_IDS, {"window_ms": int(window_s * 1000)})
        return [str(row[0]) for row in rows]

    async def _query(self, sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        self.queries += 1
        # The caller's deadline also stops the query inside ClickHouse.
        budget = remaining(None)
        settings = None if budget is None else {"max_execution_time": max(budget, 0.001)}
        result = await self.run(
            lambda client: client.query(sql, parameters=params, settings=settings)
        )
        return result.result_rows

    async def ping(self) -> None:
        """Raise unless ClickHouse answered within ``PING_FRESH_S`` or answers ``SELECT 1``.

        The health probe. A call that succeeded moments ago proves the store is
        up; skipping the query then saves a round trip under load. The query
        runs on the insert lane, where it waits behind at most one insert,
        never behind slow analytics.
        """
        if time.monotonic() - self._last_ok < PING_FRESH_S:
            return
        await self._call(self._inserts, lambda client: client.command("SELECT 1"))

    async def close(self) -> None:
        """Wait for running calls, close every client and stop the worker threads."""
        if self._closed:
            return
        self._closed = True
        await self._inserts.close()
        await self._queries.close()


def embedded_clickhouse_url(data_dir: str | os.PathLike[str]) -> str:
    """The ``chdb:///abs/path`` URL of the embedded engine under ``data_dir``."""
    return "chdb://" + os.path.abspath(os.path.join(data_dir, "clickhouse"))


def _connect(url: str, timeout_s: float, send_receive_timeout_s: float) -> Client:
    scheme = urlsplit(url).scheme
    if scheme == HOST_SCHEME:
        # The ClickHouse host of `serve --workers N` (host_client): the same
        # calls, so it stands in for a clickhouse-connect client.
        host = HostClient(Path(urlsplit(url).path), timeout_s=send_receive_timeout_s)
        return cast(Client, host)
    if scheme == "chdb":
        path = urlsplit(url).path
        if path:
            os.makedirs(path, exist_ok=True)
        return clickhouse_connect.get_client(dsn=url)
    return clickhouse_connect.get_client(
        dsn=url,
        connect_timeout=timeout_s,
        send_receive_timeout=send_receive_timeout_s,
        # No server session: the store keeps no session state (no temporary
        # tables, no SET), so nothing can ever hit "session is locked".
        autogenerate_session_id=False,
    )


async def open_clickhouse(
    url: str,
    *,
    connect_timeout_s: float = 5.0,
    send_receive_timeout_s: float = 30.0,
    query_workers: int = 2,
    insert_workers: int = 1,
    migrate: bool = False,
) -> ClickHouseStore:
    """A store that owns its clients; nothing connects until the first call.

    Args:
        url: ``chdb:///abs/path`` (embedded engine, in-process; one path per
            process), ``http(s)://user:pass@host:8123/db``, or
            ``unix:///abs/socket``: the ClickHouse host that owns the embedded
            engine under ``serve --workers N`` (``host``; set by the supervisor).
        connect_timeout_s: TCP connect timeout of the HTTP clients.
        send_receive_timeout_s: Socket timeout of the HTTP clients (bounds an insert).
        query_workers: Reads that may run at once.
        insert_workers: Inserts that may run at once.
        migrate: Apply pending migrations before the first call (see the class).

    Returns:
        The store; ``await store.close()`` releases it.

    Raises:
        ValueError: The URL's scheme is neither ``chdb`` nor ``http(s)``.
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("chdb", "http", "https", HOST_SCHEME):
        raise ValueError(f"unsupported ClickHouse URL scheme {scheme!r}: use chdb:// or http(s)://")
    connect = functools.partial(_connect, url, connect_timeout_s, send_receive_timeout_s)
    inserts = Lane("clickhouse-insert", connect, workers=insert_workers)
    queries = Lane("clickhouse-query", connect, workers=query_workers)
    return ClickHouseStore(
        inserts, queries, migrate=migrate, embedded=scheme in ("chdb", HOST_SCHEME)
    )
