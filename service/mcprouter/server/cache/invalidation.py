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

How a pattern is removed:

- ``metrics:{id}:*`` and ``analytics:{id}:*`` removed by an experiment write
  go through the experiment's **index** (``keys.INDEXED_FAMILIES``):
  every key of those families is added to its index set when its load takes
  the lease, so one script removes exactly them, leases first, in
  O(that experiment's keys), however large the rest of the keyspace is;
- every pattern of the Invalidate RPC (for operators: it also finds keys the
  cache did not write, e.g. by an older version) walks the keyspace
  with SCAN (never KEYS), on every primary of a cluster, in bounded batches,
  once for the leases and once for the values; a pattern whose entity segment
  holds a glob is matched server-side by a superset and filtered here.

Every Redis call is a strict one (``GuardedRedis.strict``): an invalidation
never fails open.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Sequence

from mcprouter.server import keys as key_layout
from mcprouter.server.cache import topology
from mcprouter.server.cache.feed import encode_message
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.keys import KeySpace

SCAN_COUNT = 1000
UNLINK_BATCH = 500

# Removes every member of an experiment's index (value keys) and its lease,
# lease first, then the index itself. KEYS[1]: the index; ARGV[1]: the
# namespace (a lease is the namespace, "_lease:", then the key without it).
REMOVE_INDEXED = """
local members = redis.call('SMEMBERS', KEYS[1])
local prefix = string.len(ARGV[1])
local removed = 0
for _, value in ipairs(members) do
  redis.call('UNLINK', ARGV[1] .. '_lease:' .. string.sub(value, prefix + 1))
  removed = removed + redis.call('UNLINK', value)
end
redis.call('UNLINK', KEYS[1])
return removed
"""


class Remover:
    """Removes keys and patterns from Redis in the safe order, and announces it."""

    def __init__(self, guard: GuardedRedis, keyspace: KeySpace, channel: str, origin: str) -> None:
        self._guard = guard
        self._redis = guard.client
        self._keyspace = keyspace
        self._channel = channel
        self._origin = origin
        self._remove_indexed = guard.client.register_script(REMOVE_INDEXED)

    async def remove(
        self, keys: Sequence[str], patterns: Sequence[str], *, by_index: bool = False
    ) -> int:
        """Remove client-visible keys and patterns; return how many values existed.

        Args:
            keys: Client-visible keys.
            patterns: Client-visible patterns.
            by_index: Remove the indexed patterns through their index (a write's
                invalidation: every key the cache stored is in it); ``False``
                walks the keyspace (the Invalidate RPC: also keys written by
                anything else).

        Raises:
            RedisError, OSError, TimeoutError: Redis failed part-way; retry the
                whole removal (every step is idempotent).
        """
        removed = 0
        if keys:
            removed += await self._guard.strict(lambda: self._unlink_in_order(list(keys)))
        for pattern in patterns:
            if by_index and (indexed := key_layout.indexed_pattern(pattern)) is not None:
                removed += await self._unlink_indexed(*indexed)
            else:
                await self._unlink_matching(pattern, lease=True)
                removed += await self._unlink_matching(pattern, lease=False)
        message = encode_message(keys, patterns, origin=self._origin)
        await self._guard.strict(lambda: topology.publish(self._redis, self._channel, message))
        return removed

    async def _unlink_in_order(self, keys: list[str]) -> int:
        # One round trip; Redis runs a pipeline's commands in order. One key per
        # command, so each goes to its own slot's node on a cluster.
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                # execute_command: a cluster pipeline's unlink() is a multi-key
                # coroutine, not a queued command.
                pipe.execute_command("UNLINK", self._keyspace.lease(key))
                pipe.execute_command("UNLINK", self._keyspace.redis_key(key))
            replies = await pipe.execute()
        return sum(int(r) for r in replies[1::2])

    async def _unlink_indexed(self, family: str, entity: str) -> int:
        index = self._keyspace.index(family, entity)
        script, namespace = self._remove_indexed, self._keyspace.namespace
        return int(await self._guard.strict(lambda: script(keys=[index], args=[namespace])))

    async def _unlink_matching(self, pattern: str, *, lease: bool) -> int:
        if lease:
            pattern = f"_lease:{pattern}"
        match = self._keyspace.redis_pattern(pattern)
        exact = self._keyspace.pattern_is_exact(pattern)
        removed = 0
        for target in topology.scan_targets(self._redis):
            cursor = 0
            while True:
                cursor, found = await self._guard.strict(
                    functools.partial(
                        topology.scan_page, self._redis, target, cursor, match, SCAN_COUNT
                    )
                )
                if not exact:
                    found = [k for k in found if self._matches(k, pattern)]
                for start in range(0, len(found), UNLINK_BATCH):
                    batch = found[start : start + UNLINK_BATCH]
                    removed += int(
                        await self._guard.strict(functools.partial(self._redis.unlink, *batch))
                    )
                if cursor == 0:
                    break
        return removed

    def _matches(self, redis_key: bytes, pattern: str) -> bool:
        return fnmatch.fnmatchcase(self._keyspace.client_key(redis_key.decode()), pattern)
