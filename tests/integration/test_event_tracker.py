"""EventTracker on real Redis and real chDB: which hours a stored event
invalidates, the start-up settle's window and bound, and shutdown.

Found by mutation testing (``make mutants``): the event-path tests show that
late events invalidate their closed hour, not that an event of an hour still
within the ingestion lag leaves it cached, nor that the keys are UTC hours
whatever the machine's time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors, keys, wiring
from mcprouter.server.clickhouse.dedup import DedupPolicy
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.store import ClickHouseStore, open_clickhouse
from mcprouter.server.clickhouse.tracking import EventTracker
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats
from mcprouter.v1.events_pb2 import Event
from tests.conditions import eventually, eventually_async
from tests.integration.test_clickhouse_processor import closed_port, event, hour_of

LAG_S = 300.0


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClickHouseStore]:
    store = await open_clickhouse(f"chdb://{tmp_path_factory.mktemp('chdb-tracker') / 'ch'}")
    await store.migrate()
    yield store
    await store.close()


class Rig:
    """A tracker whose inserts wait at ``gate`` and go to chDB, or to a dead server."""

    def __init__(self, store: ClickHouseStore, redis_url: str, namespace: str) -> None:
        self.store = store
        self.redis_url = redis_url
        self.namespace = namespace
        self.now = time.time()
        self.gate = asyncio.Event()
        self.gate.set()
        self.inserting = 0
        self.fail_inserts = False
        self.client = create_redis(redis_url, pool_size=8, timeout_s=2.0, pool_timeout_s=2.0)
        self.core = wiring.cache_core(
            self.client, KeySpace(namespace), CacheStats(), redis_timeout_s=2.0
        )
        self.batcher: EventBatcher[Event] = EventBatcher(self._insert, max_delay_ms=1)
        self.tracker = EventTracker(
            self.batcher,
            self.core.cache,
            self.core.state,
            keyspace=KeySpace(namespace),
            stats=self.core.stats,
            clock=lambda: self.now,
            dedup_policy=DedupPolicy(),
            ingestion_lag_s=LAG_S,
        )

    async def _insert(self, events: Sequence[Event]) -> None:
        self.inserting += 1
        await self.gate.wait()
        if self.fail_inserts:
            dead = await open_clickhouse(f"http://127.0.0.1:{closed_port()}")
            try:
                await dead.insert_events(events)
            finally:
                await dead.close()
        else:
            await self.store.insert_events(events)

    def redis_key(self, key: str) -> str:
        return KeySpace(self.namespace).redis_key(key)

    async def aclose(self) -> None:
        await self.tracker.aclose()
        await self.batcher.aclose()
        await self.core.cache.aclose()
        await self.client.aclose()


@pytest.fixture
async def rig(
    store: ClickHouseStore, redis_url: str, namespace: str, redis_client: aioredis.Redis
) -> AsyncIterator[Rig]:
    made = Rig(store, redis_url, namespace)
    yield made
    made.gate.set()
    with contextlib.suppress(Exception):
        await made.aclose()


@contextlib.contextmanager
def time_zone(name: str) -> Iterator[None]:
    """Run with the process's local time zone set to ``name``."""
    import os

    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


async def cached_keys_of(
    rig: Rig, redis_client: aioredis.Redis, exp: str, hour: datetime
) -> tuple[str, str]:
    """Put a cached value under the hour's metrics key and its day's analytics key."""
    metrics = rig.redis_key(keys.event_metrics_key(exp, "control", "click", hour))
    analytics = rig.redis_key(keys.analytics_key(exp, hour))
    await redis_client.set(metrics, b"cached")
    await redis_client.set(analytics, b"cached")
    return metrics, analytics


async def test_an_event_of_an_hour_closed_for_the_lag_invalidates_that_hour(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    hour = hour_of(datetime.now(UTC)) - timedelta(hours=3)
    rig.now = hour.timestamp() + 3600 + LAG_S  # closed exactly the lag ago: late
    metrics, analytics = await cached_keys_of(rig, redis_client, "e-late", hour)

    with time_zone("Asia/Kolkata"):  # UTC+05:30: local hours are not UTC hours
        assert await rig.tracker.ingest([event("e-late", at=hour + timedelta(minutes=7))]) == [True]

    assert await redis_client.exists(metrics, analytics) == 0


async def test_an_event_of_an_hour_within_the_lag_leaves_it_cached(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    hour = hour_of(datetime.now(UTC)) - timedelta(hours=3)
    rig.now = hour.timestamp() + 3600 + LAG_S - 1  # closed, but not the lag ago
    metrics, analytics = await cached_keys_of(rig, redis_client, "e-lag", hour)

    assert await rig.tracker.ingest([event("e-lag", at=hour + timedelta(minutes=7))]) == [True]

    assert await redis_client.exists(metrics, analytics) == 2


async def test_settle_recent_asks_for_twice_the_pending_ttl(rig: Rig) -> None:
    windows: list[float] = []

    async def stored_within(window_s: float) -> list[str]:
        windows.append(window_s)
        return []

    await rig.tracker.settle_recent(stored_within, wait_s=30)
    assert windows == [2 * DedupPolicy().pending_ttl_s]


async def test_settle_recent_returns_after_wait_s_and_settles_later(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    """Start-up waits at most ``wait_s`` for the settle; it goes on in the background."""
    release = asyncio.Event()
    asked = asyncio.Event()

    async def stored_within(window_s: float) -> list[str]:
        asked.set()
        await release.wait()
        return ["ev-slow"]

    await asyncio.wait_for(rig.tracker.settle_recent(stored_within, wait_s=0.05), 30)
    assert asked.is_set()
    marker = KeySpace(rig.namespace).internal("dedup", "ev-slow")
    assert not await redis_client.exists(marker)

    release.set()

    async def settled() -> bool:
        return await redis_client.get(marker) == b"1"

    await eventually_async(settled, "the settle, after start-up returned")


async def test_aclose_waits_for_ingestion_and_keeps_its_failure_to_the_task(rig: Rig) -> None:
    rig.gate.clear()
    rig.fail_inserts = True
    task = rig.tracker.start([event("e-close")])
    await eventually(lambda: rig.inserting == 1, "insert started")

    closing = asyncio.create_task(rig.tracker.aclose())
    rig.gate.set()
    await closing  # does not raise the ingestion's error

    assert task.done()
    assert isinstance(task.exception(), errors.Unavailable)


async def test_a_started_ingestion_is_released_and_its_failure_retrieved(rig: Rig) -> None:
    """Nobody awaits a task whose RPC was cancelled: the tracker lets go of it
    once done and retrieves its error, so none is reported as never retrieved."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        rig.fail_inserts = True
        task = rig.tracker.start([event("e-unawaited")])
        await eventually(task.done, "ingestion failed")
        await eventually(lambda: not rig.tracker._tasks, "task released")
        del task
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(previous)
