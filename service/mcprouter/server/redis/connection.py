"""Builds the one Redis client the server shares, tuned for a cache.

redis-py's defaults suit a primary database, not a cache: seconds of
timeouts and several retries. Here every call fails fast (a slow Redis must
cost a request milliseconds, not seconds; the cache core then falls through
to the store) and callers *wait* for a free connection instead of getting
"Too many connections" (redis-py #2517).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from mcprouter.server.cache.topology import RedisClient
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The plain URL of a ``redis+cluster://`` (or ``rediss+cluster://``) URL, else ``None``."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if sep and plain else None


def create_redis(
    url: str,
    *,
    pool_size: int,
    timeout_s: float,
    pool_timeout_s: float,
    cluster: bool = False,
) -> RedisClient:
    """A client of one server or, for a cluster URL (or ``cluster=True``), of a Redis Cluster.

    ``redis+cluster://host:port`` names any node of a cluster (redis-py's
    ``RedisCluster`` discovers the rest and follows MOVED/ASK redirections
    and failovers); ``REDIS_CLUSTER=true`` treats a plain URL the same way.
    Closing the client closes its connections.
    """
    plain = cluster_url(url)
    if plain is not None or cluster:
        return RedisCluster.from_url(
            plain or url,
            max_connections=pool_size,  # per node
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One retry rides over a MOVED during a failover or a closed idle
            # connection; a longer outage is the cache's to fail open on.
            retry=Retry(NoBackoff(), 1),
            # No health_check_interval: with it, redis-py's asyncio cluster
            # client breaks connections opened concurrently (writer is None).
        )
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
