"""The Redis boundary of the cache: bounded, breaker-guarded, failing open.

Every Redis call of the read path goes through ``GuardedRedis.call``: it is
skipped while the breaker is open (no timeout paid), bounded by
``asyncio.timeout``, and a failure is counted, logged and turned into
``Down.DOWN`` so the caller falls through to the store instead of failing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from mcprouter.server.budget import remaining, spent
from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.cache.topology import RedisClient, is_cluster
from mcprouter.server.errors import DeadlineExceeded
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType

T = TypeVar("T")

logger = logging.getLogger("mcprouter.server.cache")

# TimeoutError covers asyncio.timeout expiring (asyncio.TimeoutError is an alias
# since Python 3.11); OSError covers sockets failing outside redis-py's wrappers.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class Down(enum.Enum):
    """Marks a Redis call that was skipped (breaker open) or failed."""

    DOWN = "down"


class GuardedRedis:
    """A borrowed Redis client plus the breaker, timeout and counters around it."""

    def __init__(
        self,
        client: RedisClient,
        breaker: CircuitBreaker,
        stats: CacheStats,
        timeout: float,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self._stats = stats
        self._timeout = timeout
        self._ready = not is_cluster(client)
        self._initializing = asyncio.Lock()

    async def ready(self) -> None:
        """Load a cluster client's slot map once, before any concurrent use.

        redis-py's asyncio cluster client breaks connections when its first
        commands arrive concurrently before it knows the topology; one call
        here, serialised, avoids that. Nothing to do on a single server.
        """
        if self._ready:
            return
        async with self._initializing:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    async def call(
        self,
        what: str,
        key: str,
        data_type: DataType.ValueType,
        call: Callable[[], Awaitable[T]],
    ) -> T | Down:
        """Run one Redis call, failing open.

        Args:
            what: The operation, for the log (``GET``, ``lease``).
            key: The client-visible key, for the log.
            data_type: Where a failure is counted.
            call: Makes the awaitable; not called while the breaker is open.

        Returns:
            The reply, or ``Down.DOWN`` if the call was skipped or failed.
        """
        if not self.breaker.allow():
            return Down.DOWN
        budget = remaining(self._timeout)
        try:
            async with asyncio.timeout(budget):
                await self.ready()
                reply = await call()
        except REDIS_ERRORS as exc:
            if budget < self._timeout and isinstance(exc, TimeoutError):
                return Down.DOWN  # the caller's deadline ran out, not Redis: no breaker count
            self.breaker.record_failure()
            self._stats.record(data_type, Outcome.REDIS_ERROR)
            logger.warning(
                "Redis %s for %r failed (%s: %s); serving from the store, breaker %s",
                what,
                key,
                type(exc).__name__,
                exc,
                self.breaker.state,
            )
            return Down.DOWN
        self.breaker.record_success()
        return reply

    async def strict(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call that must not fail open; it bypasses an open breaker.

        Raises:
            RedisError, OSError, TimeoutError: Redis failed (counted first).
            DeadlineExceeded: The caller's deadline ran out, not Redis (not counted).
        """
        budget = remaining(self._timeout)
        try:
            async with asyncio.timeout(budget):
                await self.ready()
                reply = await call()
        except REDIS_ERRORS as exc:
            if isinstance(exc, TimeoutError) and budget < self._timeout and spent():
                raise DeadlineExceeded(
                    "the call's deadline passed during a Redis call; nothing is left running"
                ) from exc
            self.breaker.record_failure()
            self._stats.redis_error()
            raise
        self.breaker.record_success()
        return reply
