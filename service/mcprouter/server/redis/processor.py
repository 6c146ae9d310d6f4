"""The Redis processor: cache-only operations with no store behind them.

``GetCached`` (one pipeline: MGET plus PTTL per key), ``Invalidate`` (exact
keys, one-family patterns, entities; removal itself is the cache core's, see
``cache/invalidation.py``) and the ``SET NX EX`` dedup primitive that event
ingestion builds on.

Unlike cached reads, these operations have no store to fall back to, so a
Redis failure is reported (``CacheUnavailable``), never swallowed: an
invalidation that did not happen must not look like one that did.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from mcprouter.server import keys
from mcprouter.server.cache import CacheAside
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One key as read from Redis: its bytes (``None`` on a miss) and TTL."""

    key: str
    value: bytes | None
    ttl_ms: int | None


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """Server-side figures reported by ``Stats``."""

    used_memory_bytes: int
    key_count: int


class RedisProcessor:
    """Cache-only operations on the shared Redis."""

    def __init__(
        self, redis: aioredis.Redis, keyspace: KeySpace, stats: CacheStats, cache: CacheAside
    ) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._stats = stats
        # Every removal (keys, patterns, entities) goes through the core, which
        # breaks the matched leases and tells every instance's L1.
        self._cache = cache

    @asynccontextmanager
    async def _reporting(self, action: str) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            self._stats.redis_error()
            log.warning("redis failed during %s: %s", action, exc)
            raise CacheUnavailable(
                f"the cache (Redis) is unavailable, {action} was not done: {exc}",
                metadata={"action": action},
            ) from exc

    async def get_cached(self, client_keys: Sequence[str]) -> list[RawEntry]:
        """Read keys (already validated) in one round trip."""
        redis_keys = [self._keyspace.redis_key(k) for k in client_keys]
        async with self._reporting("GetCached"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.mget(redis_keys)
            for key in redis_keys:
                pipe.pttl(key)
            values, *ttls = await pipe.execute()
        entries = []
        for key, value, ttl in zip(client_keys, values, ttls, strict=True):
            # A key a write of ours changed, whose removal is still being
            # retried, may hold the old value: a miss (read-your-writes).
            held = None if self._cache.awaiting_invalidation(key) else value
            # PTTL is -1 for a key without expiry, -2 when it vanished meanwhile.
            entries.append(RawEntry(key, held, ttl if held is not None and ttl >= 0 else None))
        return entries

    async def invalidate_keys(self, client_keys: Sequence[str]) -> int:
        """Remove exactly these keys; return how many existed."""
        return await self._cache.invalidate(client_keys)

    async def invalidate_pattern(self, pattern: str) -> int:
        """Remove the keys matching a validated one-family pattern."""
        return await self._cache.invalidate(patterns=[pattern])

    async def invalidate_experiment(self, experiment_id: str) -> int:
        """Remove an experiment and everything derived from it."""
        return await self._cache.invalidate(
            [keys.experiment_key(experiment_id)], keys.experiment_patterns(experiment_id)
        )

    async def invalidate_user(self, user_id: str) -> int:
        """Remove a user's profile and assignments."""
        return await self._cache.invalidate(
            [keys.user_profile_key(user_id)], keys.user_patterns(user_id)
        )

    async def invalidate_collection(self, collection: str) -> int:
        """Make every cached search of a collection unreachable, then remove them.

        Bumping the collection's search generation (part of every search key,
        see ``search_keys``) is what invalidates: at once, on every instance
        and in every L1, with no SCAN. The SCAN + UNLINK after it only frees
        the memory of the now unreachable entries; its count is the answer.
        """
        from mcprouter.server.chroma.search_keys import generation_key

        async with self._reporting("Invalidate"):
            await self._redis.incr(generation_key(self._keyspace, collection))
        return await self._cache.invalidate(patterns=[keys.collection_pattern(collection)])

    async def mark_once(self, family: str, ident: str, ttl_s: int) -> bool:
        """Set a marker unless it exists (``SET NX EX``); True if this call set it.

        The dedup primitive: the first caller for an id wins, every later one
        within ``ttl_s`` sees False.
        """
        async with self._reporting("dedup"):
            created = await self._redis.set(
                self._keyspace.internal(family, ident), b"1", nx=True, ex=ttl_s
            )
        return bool(created)

    async def release_marks(self, family: str, idents: Sequence[str]) -> int:
        """Remove markers set by ``mark_once`` (e.g. after a failed write)."""
        async with self._reporting("dedup release"):
            markers = [self._keyspace.internal(family, i) for i in idents]
            return int(await self._redis.unlink(*markers)) if markers else 0

    async def figures(self) -> RedisFigures:
        """Memory in use and key count of the Redis database."""
        async with self._reporting("Stats"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.info("memory")
            pipe.dbsize()
            memory, key_count = await pipe.execute()
        return RedisFigures(int(memory.get("used_memory", 0)), int(key_count))

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._redis.ping()
