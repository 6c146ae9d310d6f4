"""The App container: builds every component from Settings and owns their lifetimes.

``open_app`` opens each resource in an ``AsyncExitStack`` (embedded servers
first, then clients and pools, then the components that borrow them) and
yields a frozen ``App``; on exit they close in reverse order. Whoever opens a
resource closes it; everything else only borrows it through a constructor
argument.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg

from mcprouter.server import wiring
from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker, LocalCache
from mcprouter.server.cache.topology import RedisClient
from mcprouter.server.chroma.processor import ChromaProcessor
from mcprouter.server.chroma.store import ChromaStore, open_chroma
from mcprouter.server.clickhouse.dedup import DedupPolicy
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import (
    ClickHousePolicies,
    experiment_lookup,
)
from mcprouter.server.clickhouse.store import (
    ClickHouseStore,
    embedded_clickhouse_url,
    open_clickhouse,
)
from mcprouter.server.config import Settings
from mcprouter.server.embedded import embedded_postgres, embedded_redis
from mcprouter.server.errors import Unavailable
from mcprouter.server.fleet import FleetStats
from mcprouter.server.keys import KeySpace
from mcprouter.server.postgres.migrations import apply_migrations
from mcprouter.server.postgres.pool import create_pool
from mcprouter.server.postgres.processor import PostgresPolicies, PostgresProcessor
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.router import Router
from mcprouter.server.stats import CacheStats
from mcprouter.server.timings import StoreTimings, instrument
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.serve_status_pb2 import DataType

log = logging.getLogger(__name__)

# The store calls timed per operation (``timings.py``); probes and migrations are not.
TIMED = {
    "postgres": (
        "get_experiment", "get_experiments", "upsert_experiment", "get_user_profile",
        "get_user_profiles", "upsert_user_profile", "get_or_create_assignment",
    ),
    "clickhouse": ("insert_events", "hour_metrics", "day_counts"),
    "chroma": ("upsert", "query", "dimension"),
}  # fmt: skip

Probe = Callable[[], Awaitable[object]]
"""Raises unless its backend answers (the health monitor calls one per backend)."""


@dataclass(frozen=True)
class App:
    """Everything a running server uses, built once."""

    settings: Settings
    redis: RedisClient
    state_redis: RedisClient
    postgres: asyncpg.Pool
    clickhouse: ClickHouseStore
    chroma: ChromaStore
    stats: CacheStats
    keyspace: KeySpace
    cache: CacheAside
    cache_ops: RedisProcessor
    router: Router
    probes: Mapping[str, Probe]
    batcher: EventBatcher[Event]
    timings: StoreTimings
    fleet: FleetStats


def cache_policy(settings: Settings, data_type: DataType.ValueType, fresh_s: int) -> CachePolicy:
    """The policy of one data type under the configured defaults."""
    return CachePolicy(
        data_type=data_type,
        fresh_ttl=fresh_s,
        stale_ttl=settings.cache_stale_ttl_s,
        negative_ttl=settings.cache_negative_ttl_s,
        enabled=settings.cache_enabled,
    )


def postgres_policies(settings: Settings) -> PostgresPolicies:
    """Cache policies of the PostgreSQL data types."""
    return PostgresPolicies(
        experiment=cache_policy(settings, DataType.DATA_TYPE_EXPERIMENT, settings.ttl_experiment_s),
        assignment=cache_policy(settings, DataType.DATA_TYPE_ASSIGNMENT, settings.ttl_assignment_s),
        user_profile=cache_policy(
            settings, DataType.DATA_TYPE_USER_PROFILE, settings.ttl_user_profile_s
        ),
    )


def clickhouse_policies(settings: Settings) -> ClickHousePolicies:
    """Cache policies of the ClickHouse data types."""
    metrics = DataType.DATA_TYPE_EVENT_METRICS
    return ClickHousePolicies(
        event_metrics=cache_policy(settings, metrics, settings.ttl_event_metrics_s),
        analytics=cache_policy(settings, DataType.DATA_TYPE_ANALYTICS, settings.ttl_analytics_s),
        closed_hour=cache_policy(settings, metrics, settings.ttl_closed_hour_metrics_s),
    )


@asynccontextmanager
async def open_clickhouse_store(settings: Settings) -> AsyncIterator[ClickHouseStore]:
    """The ClickHouse store (embedded chDB when no URL is set), migrated on first use.

    A ClickHouse that is down does not stop start-up, as for PostgreSQL and
    Chroma: the store connects when it can, requests needing it answer
    UNAVAILABLE until then, and the health probe reports ``clickhouse``.
    """
    store = await open_clickhouse(
        settings.clickhouse_url or embedded_clickhouse_url(settings.data_dir),
        send_receive_timeout_s=settings.clickhouse_insert_timeout_s,
        query_workers=settings.clickhouse_query_workers,
        insert_workers=settings.ingest_max_concurrent_inserts,
        migrate=settings.clickhouse_url is None or settings.migrate_on_start,
    )
    try:
        try:
            await store.ping()  # connect (and migrate) now if it can
        except Unavailable as exc:
            log.warning("ClickHouse is unavailable at start-up, serving without it: %s", exc)
        yield store
    finally:
        await store.close()


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply pending migrations; return the versions applied."""
    async with pool.acquire() as conn:
        applied = await apply_migrations(conn)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


@asynccontextmanager
async def open_postgres(settings: Settings, stack: AsyncExitStack) -> AsyncIterator[asyncpg.Pool]:
    """The PostgreSQL pool (starting the embedded server if no DSN is set)."""
    dsn = settings.postgres_dsn
    if dsn is None:
        dsn = await stack.enter_async_context(embedded_postgres(settings.data_dir))
    # min_size=0: the server starts (and reports postgres NOT_SERVING) even
    # when PostgreSQL is down; connections open on first use.
    pool = await create_pool(
        dsn,
        min_size=0,
        max_size=settings.postgres_pool_size,
        command_timeout=settings.postgres_command_timeout_s,
    )
    try:
        yield pool
    finally:
        await pool.close()


def open_redis(settings: Settings, url: str, stack: AsyncExitStack) -> RedisClient:
    """A client tuned for the service (``create_redis``), closed with ``stack``."""
    client = create_redis(
        url,
        pool_size=settings.redis_pool_size,
        timeout_s=settings.redis_timeout_ms / 1000,
        pool_timeout_s=settings.redis_pool_timeout_ms / 1000,
        cluster=settings.redis_cluster,
    )
    stack.push_async_callback(client.aclose)
    return client


@asynccontextmanager
async def open_app(settings: Settings) -> AsyncIterator[App]:
    """Open every resource the server needs; close them all on exit."""
    async with AsyncExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url = await stack.enter_async_context(embedded_redis(settings.data_dir))
        redis_timeout_s = settings.redis_timeout_ms / 1000
        redis = open_redis(settings, redis_url, stack)
        # The state role (what cannot be rebuilt) on its own server when configured.
        state_url = settings.redis_state_url
        state = redis if state_url in (None, redis_url) else open_redis(settings, state_url, stack)
        postgres = await stack.enter_async_context(open_postgres(settings, stack))
        if settings.postgres_dsn is None or settings.migrate_on_start:
            await migrate(postgres)

        stats = CacheStats()
        keyspace = KeySpace(settings.key_namespace)

        def breaker() -> CircuitBreaker:
            return CircuitBreaker(
                failure_threshold=settings.redis_breaker_failures,
                reset_timeout=settings.redis_breaker_reset_s,
            )

        core = wiring.cache_core(
            redis,
            keyspace,
            stats,
            state_redis=state,
            breaker=breaker(),
            state_breaker=breaker(),
            local=LocalCache(
                max_entries=settings.cache_local_max_entries,
                max_age=settings.cache_local_max_age_s,
                max_bytes=settings.cache_local_max_bytes,
                clock=time.time,
            ),
            redis_timeout_s=redis_timeout_s,
            feed_ping_interval_s=settings.cache_feed_ping_interval_s,
        )
        cache = core.cache
        cache.start()
        stack.push_async_callback(cache.aclose)
        cache_ops = RedisProcessor(cache, keyspace, state=core.state)
        # Closed before the cache core: its last act is removing its own entry.
        fleet = FleetStats(
            cache.guard, keyspace, stats, interval_s=settings.stats_publish_interval_s
        )
        fleet.start()
        stack.push_async_callback(fleet.aclose)
        timings = StoreTimings()
        postgres_store = PostgresStore(postgres)
        instrument(postgres_store, "postgres", TIMED["postgres"], timings)
        pg_policies = postgres_policies(settings)
        postgres_processor = PostgresProcessor(postgres_store, cache, pg_policies)
        stack.push_async_callback(postgres_processor.aclose)

        clickhouse = await stack.enter_async_context(open_clickhouse_store(settings))
        instrument(clickhouse, "clickhouse", TIMED["clickhouse"], timings)
        batcher = EventBatcher(
            clickhouse.insert_events,
            max_batch=settings.ingest_max_batch,
            max_delay_ms=settings.ingest_max_delay_ms,
            max_pending=settings.ingest_max_pending,
            max_concurrent=settings.ingest_max_concurrent_inserts,
        )
        # Closed before the store: pending events are flushed, not dropped.
        stack.push_async_callback(batcher.aclose)
        clickhouse_processor = wiring.clickhouse_processor(
            core,
            clickhouse,
            batcher,
            policies=clickhouse_policies(settings),
            experiments=experiment_lookup(
                cache, postgres_store.get_experiment, pg_policies.experiment
            ),
            dedup_policy=DedupPolicy(
                done_ttl_s=settings.dedup_ttl_s,
                pending_ttl_s=settings.dedup_pending_ttl_s,
                insert_timeout_s=settings.clickhouse_insert_timeout_s,
            ),
            ingestion_lag_s=settings.ingestion_lag_s,
        )
        stack.push_async_callback(clickhouse_processor.aclose)
        await clickhouse_processor.start()

        # A Chroma server that is down does not stop start-up: its client
        # connects on first use and the health probe reports it.
        chroma = await open_chroma(
            settings.chroma_url,
            settings.data_dir / "chroma",
            workers=settings.chroma_embedded_workers,
            timeout_s=settings.chroma_timeout_s,
        )
        stack.push_async_callback(chroma.close)
        instrument(chroma, "chroma", TIMED["chroma"], timings)
        chroma_processor = ChromaProcessor(
            chroma,
            cache,
            core.state,
            keyspace,
            cache_policy(settings, DataType.DATA_TYPE_SEARCH, settings.ttl_search_s),
        )
        stack.push_async_callback(chroma_processor.aclose)

        async def postgres_probe() -> None:
            await postgres.fetchval("SELECT 1")

        yield App(
            settings=settings,
            redis=redis,
            state_redis=state,
            postgres=postgres,
            clickhouse=clickhouse,
            chroma=chroma,
            stats=stats,
            keyspace=keyspace,
            cache=cache,
            cache_ops=cache_ops,
            router=Router(
                postgres_processor.handlers(),
                clickhouse_processor.handlers(),
                chroma_processor.handlers(),
            ),
            batcher=batcher,
            timings=timings,
            fleet=fleet,
            probes={
                "redis": cache_ops.ping,
                **({"redis_state": cache_ops.ping_state} if state is not redis else {}),
                "postgres": postgres_probe,
                "clickhouse": clickhouse.ping,
                "chroma": chroma.ping,
            },
        )
