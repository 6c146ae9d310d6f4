"""The Redis processor: cache-only operations with no store behind them.

``GetCached`` (one pipeline: GET and PTTL per key), ``Invalidate`` (exact
keys, one-family patterns, entities; removal itself is the cache core's, see
``cache/invalidation.py``) and the figures ``Stats`` reports. (Event dedup
records live in ``clickhouse/dedup.py``: they need a pending state, which a
plain ``SET NX`` marker cannot express.)

Unlike cached reads, these operations have no store to fall back to, so a
Redis failure is reported (``CacheUnavailable``), never swallowed: an
invalidation that did not happen must not look like one that did.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mcprouter.server import keys
from mcprouter.server.cache import CacheAside, topology
from mcprouter.server.cache.guard import REDIS_ERRORS, GuardedRedis
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.keys import KeySpace

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    """Cache-only operations, through the guarded doors of the two Redis roles."""

    def __init__(
        self,
        cache: CacheAside,
        keyspace: KeySpace,
        *,
        state: GuardedRedis | None = None,
    ) -> None:
        """Borrow the cache core (and its door to the cache role) and the state door.

        Args:
            cache: The cache core: every removal goes through it (it breaks the
                matched leases and tells every instance's L1); its ``guard`` is
                the cache role's door.
            keyspace: Namespace of every key.
            state: The state role's door (search generations); the cache
                role's when it is the same server.
        """
        self._cache = cache
        self._guard = cache.guard
        self._state = state if state is not None else cache.guard
        self._keyspace = keyspace

    async def _strict(self, action: str, door: GuardedRedis, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call that must not fail open: a failure is ``CacheUnavailable``."""
        try:
            return await door.strict(call)
        except REDIS_ERRORS as exc:
            log.warning("redis failed during %s: %s", action, exc)
            raise CacheUnavailable(
                f"the cache (Redis) is unavailable, {action} was not done: {exc}",
                metadata={"action": action},
            ) from exc

    async def get_cached(self, client_keys: Sequence[str]) -> list[RawEntry]:
        """Read keys (already validated) in one round trip."""
        redis_keys = [self._keyspace.redis_key(k) for k in client_keys]
        client = self._guard.client

        async def read() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key in redis_keys:  # GET + PTTL per key: one slot each on a cluster
                    pipe.get(key)
                    pipe.pttl(key)
                replies: list[Any] = await pipe.execute()
            return replies

        replies = await self._strict("GetCached", self._guard, read)
        entries = []
        for index, key in enumerate(client_keys):
            value, ttl = replies[2 * index], replies[2 * index + 1]
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
        generation = self._keyspace.generation(collection)
        state = self._state.client
        await self._strict("Invalidate", self._state, lambda: state.incr(generation))
        return await self._cache.invalidate(patterns=[keys.collection_pattern(collection)])

    async def figures(self) -> RedisFigures:
        """Memory in use and key count of the cache role (summed over a cluster's primaries)."""
        client = self._guard.client
        used, count = await self._strict(
            "Stats", self._guard, lambda: topology.primaries_figures(client)
        )
        return RedisFigures(used, count)

    async def ping(self) -> None:
        """Raise unless the cache role answers."""
        await self._guard.ready()
        await self._guard.client.ping()

    async def ping_state(self) -> None:
        """Raise unless the state role answers."""
        await self._state.ready()
        await self._state.client.ping()
