"""Removing cached values from Redis: leases first, then values, then the feed.

Order matters, because removal and a load's store-if-leased script are
separate commands that other clients' commands interleave with:

1. **leases** of the matched keys are deleted first, so from then on no load
   that began before the write can store its value (it no longer holds its
   lease, and ``loading.py`` stores only under a lease);
2. then the **values**, so whatever such a load stored before step 1 is gone;
3. then the removal is **published** on the invalidation channel, so every
   instance's L1 drops the keys once Redis no longer has them.

A load whose lease was taken after step 1 read its store after the write
committed (invalidation always follows the commit), so its value is current.

Patterns walk the keyspace with SCAN (never KEYS) in bounded batches, once
for the leases and once for the values. Every Redis call is a strict one
(``GuardedRedis.strict``): an invalidation never fails open.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from mcprouter.server.cache.feed import encode_message
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.keys import KeySpace

SCAN_COUNT = 1000
UNLINK_BATCH = 500
LEASE_FAMILY = "lease"


def lease_key(keyspace: KeySpace, key: str) -> str:
    """The Redis key of the load lease of a client-visible key."""
    return keyspace.internal(LEASE_FAMILY, key)


class Remover:
    """Removes keys and patterns from Redis in the safe order, and announces it."""

    def __init__(self, guard: GuardedRedis, keyspace: KeySpace, channel: str, origin: str) -> None:
        self._guard = guard
        self._redis = guard.client
        self._keyspace = keyspace
        self._channel = channel
        self._origin = origin

    async def remove(self, keys: Sequence[str], patterns: Sequence[str]) -> int:
        """Remove client-visible keys and patterns; return how many values existed.

        Raises:
            RedisError, OSError, TimeoutError: Redis failed part-way; retry the
                whole removal (every step is idempotent).
        """
        removed = 0
        if keys:
            leases = [lease_key(self._keyspace, k) for k in keys]
            values = [self._keyspace.redis_key(k) for k in keys]
            removed += await self._guard.strict(lambda: self._unlink_in_order(leases, values))
        for pattern in patterns:
            await self._unlink_matching(lease_key(self._keyspace, pattern))
            removed += await self._unlink_matching(self._keyspace.redis_key(pattern))
        message = encode_message(keys, patterns, origin=self._origin)
        await self._guard.strict(lambda: self._redis.publish(self._channel, message))
        return removed

    async def _unlink_in_order(self, leases: list[str], values: list[str]) -> int:
        # One round trip; Redis runs a pipeline's commands in order.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.unlink(*leases)
            pipe.unlink(*values)
            _, removed = await pipe.execute()
        return int(removed)

    async def _unlink_matching(self, redis_pattern: str) -> int:
        removed = 0
        cursor: int = 0
        while True:
            cursor, found = await self._guard.strict(
                functools.partial(self._redis.scan, cursor, match=redis_pattern, count=SCAN_COUNT)
            )
            for start in range(0, len(found), UNLINK_BATCH):
                batch = found[start : start + UNLINK_BATCH]
                removed += int(
                    await self._guard.strict(functools.partial(self._redis.unlink, *batch))
                )
            if cursor == 0:
                return removed
