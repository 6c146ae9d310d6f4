"""Event ingestion: dedup records, group-committed insert, real-time counters.

``EventTracker.ingest`` is steps 2-4 of ``track_events`` (see ``processor``):
claim the request's event ids (``dedup``: pending records, all or nothing),
hand the new events to the batcher and wait for their insert, then mark their
records done (or, if the insert failed, release them), count the stored
events in Redis and invalidate what late events changed. The requests one
insert carried resume together, so that last stage is coalesced: one mark,
one count for all of them (``coalescing``). The caller runs it
in a task it only awaits (shielded), so a cancelled RPC cannot stop the
sequence half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from mcprouter.server import keys
from mcprouter.server.cache import CacheAside
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.clickhouse.dedup import Claim, DedupPolicy, DedupRecords
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.realtime import RealtimeCounters, hour_start
from mcprouter.server.coalescing import Coalescer
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats
from mcprouter.v1.events_pb2 import Event

log = logging.getLogger(__name__)

# The ids of the events the store received within the last N seconds.
StoredWithin = Callable[[float], Awaitable[Sequence[str]]]


class EventTracker:
    """Deduplicates, stores and counts events; borrows every collaborator."""

    def __init__(
        self,
        batcher: EventBatcher[Event],
        cache: CacheAside,
        state: GuardedRedis,
        *,
        keyspace: KeySpace,
        stats: CacheStats,
        clock: Callable[[], float] = time.time,
        dedup_policy: DedupPolicy | None = None,
        ingestion_lag_s: float = 300.0,
    ) -> None:
        self._batcher = batcher
        self._cache = cache
        self._stats = stats
        self._clock = clock
        self._lag_s = ingestion_lag_s
        # Dedup records and counters are state (never evicted): the state role's door.
        self._counters = RealtimeCounters(state, keyspace)
        self._tasks: set[asyncio.Task[list[bool]]] = set()
        # Marking records done and releasing them: retried until Redis takes them.
        self._followups = FollowUps()
        self._dedup = DedupRecords(state, keyspace, self._followups, dedup_policy or DedupPolicy())
        self._stored: Coalescer[tuple[Claim, Sequence[Event]]] = Coalescer(
            self._after_stored, name="events-stored"
        )

    @property
    def counters(self) -> RealtimeCounters:
        """The real-time counters this tracker updates."""
        return self._counters

    async def settle_recent(self, stored_within: StoredWithin, *, wait_s: float) -> None:
        """At start-up: make done the records of events stored just before a restart.

        A process killed between an insert and its done mark left those
        records pending (``dedup``). Settling them is a follow-up, retried
        until the store and Redis both answer; start-up waits up to ``wait_s``
        for the first attempt, so a healthy instance serves only once settled.
        """
        window_s = 2 * self._dedup.policy.pending_ttl_s

        async def attempt() -> None:
            settled = await self._dedup.settle_stored(await stored_within(window_s))
            if settled:
                log.info(
                    "%d dedup records made done: their events were stored before a restart", settled
                )

        first = self._followups.request("settle dedup records of recently stored events", attempt)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await asyncio.shield(first)

    def start(self, events: Sequence[Event]) -> asyncio.Task[list[bool]]:
        """Start ingesting ``events`` in a task kept until done (see ``ingest``)."""
        task = asyncio.create_task(self.ingest(events), name="track-events")
        self._keep(task)
        return task

    async def ingest(self, events: Sequence[Event]) -> list[bool]:
        """Claim, store and count events; True per event that was new (STORED).

        Raises:
            CacheUnavailable: Redis failed; nothing was claimed or stored.
            Unavailable: ``EVENTS_IN_FLIGHT`` (nothing claimed), or the insert
                failed (the records claimed were released).
            ResourceExhausted: Too many events wait for ClickHouse; released too.
        """
        claim = await self._dedup.claim([e.event_id for e in events])
        new = [e for e, fresh in zip(events, claim.is_new, strict=True) if fresh]
        if duplicates := len(events) - len(new):
            self._stats.dedup_hit(duplicates)
        if not new:
            return claim.is_new
        try:
            await self._batcher.add(new, start_by=claim.start_by)
        except Exception:
            # Not stored (or not known to be: a timed-out insert): let a retry
            # claim these ids again. The error is already the exception tree's
            # (the store translates its driver's failures), e.g. Unavailable.
            await self._dedup.release(claim)
            raise
        # Stored: whatever Redis does now, the answer is STORED.
        await self._stored.submit((claim, new))
        return claim.is_new

    async def _after_stored(self, stored: list[tuple[Claim, Sequence[Event]]]) -> None:
        events = [event for _, new in stored for event in new]
        await asyncio.gather(
            self._dedup.mark_done([claim for claim, _ in stored]), self._after_insert(events)
        )

    async def _after_insert(self, events: Sequence[Event]) -> None:
        # Best effort (the guard logs and counts a failure): the events are stored.
        await self._counters.record(events)
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
            # Like any committed write's invalidation: retried until Redis
            # takes it (a closed hour is cached for days otherwise).
            await self._cache.after_write(list(late))

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
        """Let in-flight ingestion finish, then give pending record writes a last try."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stored.aclose()
        await self._followups.aclose()
