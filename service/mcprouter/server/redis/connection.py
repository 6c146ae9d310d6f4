"""Builds the one Redis client the server shares, tuned for a cache.

redis-py's defaults suit a primary database, not a cache: seconds of
timeouts and several retries. Here every call fails fast (a slow Redis must
cost a request milliseconds, not seconds; the cache core then falls through
to the store) and callers *wait* for a free connection instead of getting
"Too many connections" (redis-py #2517).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def create_redis(
    url: str, *, pool_size: int, timeout_s: float, pool_timeout_s: float
) -> aioredis.Redis:
    """A client over a blocking pool; closing the client closes the pool."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=pool_timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # One immediate retry covers a connection the server closed while idle;
        # more would multiply the cost of an outage.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)
