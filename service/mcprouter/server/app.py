"""The App container: builds every component from Settings and owns their lifetimes.

``open_app`` opens each resource in an ``AsyncExitStack`` (embedded servers
first, then clients and pools) and yields a frozen ``App``; on exit they close
in reverse order. Whoever opens a resource closes it; everything else only
borrows it through a constructor argument.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from mcprouter.server.config import Settings
from mcprouter.server.embedded import embedded_postgres, embedded_redis
from mcprouter.server.health import Probe
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis_connection import create_redis
from mcprouter.server.redis_processor import RedisProcessor
from mcprouter.server.router import Handler, Router
from mcprouter.server.stats import CacheStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class App:
    """Everything a running server uses, built once."""

    settings: Settings
    redis: aioredis.Redis
    postgres: asyncpg.Pool
    stats: CacheStats
    keyspace: KeySpace
    cache_ops: RedisProcessor
    router: Router
    probes: Mapping[str, Probe]


@asynccontextmanager
async def open_app(settings: Settings) -> AsyncIterator[App]:
    """Open every resource the server needs; close them all on exit."""
    async with AsyncExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url = await stack.enter_async_context(embedded_redis(settings.data_dir))
        postgres_dsn = settings.postgres_dsn
        if postgres_dsn is None:
            postgres_dsn = await stack.enter_async_context(embedded_postgres(settings.data_dir))
        timeout_s = settings.redis_timeout_ms / 1000
        redis = create_redis(
            redis_url,
            pool_size=settings.redis_pool_size,
            timeout_s=timeout_s,
            pool_timeout_s=settings.redis_pool_timeout_ms / 1000,
        )
        stack.push_async_callback(redis.aclose)
        # min_size=0: the server starts (and reports postgres NOT_SERVING)
        # even when PostgreSQL is down; connections open on first use.
        postgres = await asyncpg.create_pool(
            postgres_dsn, min_size=0, max_size=settings.postgres_pool_size
        )
        stack.push_async_callback(postgres.close)

        stats = CacheStats()
        keyspace = KeySpace(settings.key_namespace)
        cache_ops = RedisProcessor(redis, keyspace, stats)
        handlers: dict[str, Handler] = {}

        async def postgres_probe() -> None:
            await postgres.fetchval("SELECT 1")

        yield App(
            settings=settings,
            redis=redis,
            postgres=postgres,
            stats=stats,
            keyspace=keyspace,
            cache_ops=cache_ops,
            router=Router(handlers),
            probes={"redis": cache_ops.ping, "postgres": postgres_probe},
        )
