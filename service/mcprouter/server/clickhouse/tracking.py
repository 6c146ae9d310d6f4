"""Event ingestion: dedup markers, group-committed insert, real-time counters.

``EventTracker.ingest`` is steps 2-4 of ``track_events`` (see
``clickhouse_processor``): claim every event id with ``SET NX EX``, hand the
new events to the batcher and wait for their insert, release the markers if
it failed, then count the stored events in Redis and invalidate what late
events changed. The caller runs it in a task it only awaits (shielded), so a
cancelled RPC cannot stop the sequence half-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import redis.asyncio as aioredis

from mcprouter.server import keys
from mcprouter.server.cache import CacheAside
from mcprouter.server.cache.guard import REDIS_ERRORS
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.realtime import RealtimeCounters, hour_start
from mcprouter.server.errors import CacheUnavailable, RouterError, Unavailable
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.stats import CacheStats
from mcprouter.v1.events_pb2 import Event

log = logging.getLogger(__name__)

DEDUP_FAMILY = "dedup"
# SET NX EX for each key, in order (so a repeat within one request loses to its
# first copy); 1 where the key was set. One command instead of one per event:
# redis-py spends ~100-150 us of CPU packing and parsing each pipelined SET,
# which capped batch ingestion near 5 000 events/s. A script is atomic, so a
# failure leaves either every marker or none. (On Redis Cluster the keys of
# one call would have to share a slot: group them by slot before calling.)
CLAIM_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, '1', 'NX', 'EX', ARGV[1]) then out[i] = 1 else out[i] = 0 end
end
return out
"""


class EventTracker:
    """Deduplicates, stores and counts events; borrows every collaborator."""

    def __init__(
        self,
        batcher: EventBatcher[Event],
        cache: CacheAside,
        *,
        dedup: RedisProcessor,
        redis: aioredis.Redis,
        keyspace: KeySpace,
        stats: CacheStats,
        clock: Callable[[], float] = time.time,
        dedup_ttl_s: int = 7 * 86_400,
        ingestion_lag_s: float = 300.0,
    ) -> None:
        self._batcher = batcher
        self._cache = cache
        self._dedup = dedup
        self._redis = redis
        self._keyspace = keyspace
        self._stats = stats
        self._clock = clock
        self._dedup_ttl_s = dedup_ttl_s
        self._lag_s = ingestion_lag_s
        self._counters = RealtimeCounters(redis, keyspace)
        self._claim_script = redis.register_script(CLAIM_SCRIPT)
        self._tasks: set[asyncio.Task[list[bool]]] = set()
        self._releases = FollowUps()

    @property
    def counters(self) -> RealtimeCounters:
        """The real-time counters this tracker updates."""
        return self._counters

    def start(self, events: Sequence[Event]) -> asyncio.Task[list[bool]]:
        """Start ingesting ``events`` in a task kept until done (see ``ingest``)."""
        task = asyncio.create_task(self.ingest(events), name="track-events")
        self._keep(task)
        return task

    async def ingest(self, events: Sequence[Event]) -> list[bool]:
        """Claim, store and count events; True per event that was new (STORED).

        Raises:
            CacheUnavailable: Redis failed; nothing was claimed or stored.
            Unavailable: The insert failed; the events' markers were released.
            ResourceExhausted: Too many events wait for ClickHouse; released too.
        """
        is_new = await self._claim([e.event_id for e in events])
        new = [e for e, fresh in zip(events, is_new, strict=True) if fresh]
        if duplicates := len(events) - len(new):
            self._stats.dedup_hit(duplicates)
        if not new:
            return is_new
        try:
            await self._batcher.add(new)
        except Exception as exc:
            await self._release([e.event_id for e in new])
            if isinstance(exc, RouterError):
                raise  # ResourceExhausted (back off) or Unavailable (shutting down) as is
            raise Unavailable(
                f"ClickHouse did not store {len(new)} events ({type(exc).__name__}: {exc}); "
                "none of them was stored, retry them",
                metadata={"events": str(len(new))},
            ) from exc
        await self._after_insert(new)
        return is_new

    async def _claim(self, event_ids: Sequence[str]) -> list[bool]:
        """SET NX EX every id, in order, in one script call; True where this call set it."""
        keys_ = [self._keyspace.internal(DEDUP_FAMILY, event_id) for event_id in event_ids]
        try:
            # strict: dedup never fails open (an event could be counted twice).
            replies = await self._cache.guard.strict(
                lambda: self._claim_script(keys=keys_, args=[self._dedup_ttl_s])
            )
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(
                f"Redis failed, events cannot be deduplicated and were not stored: {exc}",
                metadata={"action": "dedup"},
            ) from exc
        return [bool(reply) for reply in replies]

    async def _release(self, event_ids: Sequence[str]) -> None:
        try:
            await self._dedup.release_marks(DEDUP_FAMILY, event_ids)
        except CacheUnavailable as exc:
            log.warning("releasing %d dedup markers failed, retrying: %s", len(event_ids), exc)
            ids = list(event_ids)
            self._releases.request(
                f"release of {len(ids)} dedup markers ({ids[0]}...)",
                lambda: self._dedup.release_marks(DEDUP_FAMILY, ids),
            )

    async def _after_insert(self, events: Sequence[Event]) -> None:
        try:
            await self._counters.record(events)
        except REDIS_ERRORS as exc:
            self._stats.redis_error()
            log.warning("real-time counters of %d stored events not updated: %s", len(events), exc)
        # Epoch-second arithmetic: this runs for every stored event.
        closed_before = self._clock() - self._lag_s
        late: dict[str, None] = {}
        for e in events:
            start = hour_start(e)
            if start + 3600 <= closed_before:
                hour = datetime.fromtimestamp(start, UTC)
                late[keys.event_metrics_key(e.experiment_id, e.variant, e.event_type, hour)] = None
                late[keys.analytics_key(e.experiment_id, hour)] = None
        if late:
            try:
                await self._cache.invalidate(list(late))
            except CacheUnavailable as exc:
                log.warning("late events stored but %d entries not invalidated: %s", len(late), exc)

    def _keep(self, task: asyncio.Task[list[bool]]) -> None:
        """Hold a task until done, so ``aclose`` finds it, and retrieve its outcome.

        Nobody awaits the outcome when the RPC that started the task was cancelled.
        """
        self._tasks.add(task)

        def done(t: asyncio.Task[list[bool]]) -> None:
            self._tasks.discard(t)
            if not t.cancelled():
                t.exception()

        task.add_done_callback(done)

    async def aclose(self) -> None:
        """Let in-flight ingestion finish, then cancel background marker releases."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._releases.aclose()
