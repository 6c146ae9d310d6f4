"""Group commit: many concurrent requests' events share one ClickHouse insert.

ClickHouse wants few large inserts (each insert makes a part; thousands of
tiny ones a second make merges fall behind), while each request carries one
or a few events. ``EventBatcher`` collects the events of concurrent callers
and hands them to its sink as one batch when either

* ``max_batch`` events are pending, or
* ``max_delay_ms`` passed since the first pending event arrived,

whichever comes first. At most ``max_concurrent`` flushes run at a time
(default 1; the service uses ``INGEST_MAX_CONCURRENT_INSERTS``); events that
arrive while every slot is busy gather into the next batch, so under load the
batch size grows to fill the insert time (classic group commit), and at low
load an event waits at most ``max_delay_ms`` plus one insert.

Acknowledgement: ``add()`` returns only after the sink call that carried all
of the caller's events succeeded, and raises the sink's error to every caller
of a failed batch. A caller's events are never split across two batches.
A cancelled caller does not take its events out of a batch (they may already
be on their way into ClickHouse); the flush still runs and its outcome is
still delivered to the future.

Bounded wait: a caller may give ``start_by`` (on the batcher's clock): if
its events' insert has not started by then, they are failed with
``Unavailable`` without being inserted. Event ingestion uses it so that an
insert never starts after the dedup records of its events could have expired
(see ``dedup``).

Shutdown: ``aclose()`` stops accepting, flushes everything pending and waits
for it, so nothing acknowledged is lost and nothing pending is dropped
silently. Bounded memory: at most ``max_pending`` events wait; beyond that
``add()`` raises ``ResourceExhausted`` (the caller releases its dedup markers
and the client retries later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mcprouter.server.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Sink = Callable[[Sequence[T]], Awaitable[None]]


@dataclass(slots=True)
class _Pending(Generic[T]):
    items: Sequence[T]
    done: asyncio.Future[None]
    start_by: float | None = None


class EventBatcher(Generic[T]):
    """Collects items from concurrent callers into batches for one sink."""

    def __init__(
        self,
        sink: Sink[T],
        *,
        max_batch: int = 5000,
        max_delay_ms: float = 15.0,
        max_pending: int = 100_000,
        max_concurrent: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Batch items for ``sink``.

        Args:
            sink: Writes one batch; returns only once it is durable.
            max_batch: Pending items that trigger a flush at once.
            max_delay_ms: Longest wait of the first pending item before a flush.
            max_pending: Items that may wait at once; more are refused.
            max_concurrent: Sink calls that may run at once; while all are busy,
                new items gather into the next (larger) batch.
            clock: Monotonic seconds (injected for tests).
        """
        if max_batch < 1 or max_pending < max_batch or max_delay_ms < 0 or max_concurrent < 1:
            raise ValueError(
                "need max_batch >= 1, max_pending >= max_batch, max_delay_ms >= 0, "
                "max_concurrent >= 1"
            )
        self._sink = sink
        self._max_batch = max_batch
        self._max_delay = max_delay_ms / 1000
        self._max_pending = max_pending
        self._clock = clock
        self._pending: list[_Pending[T]] = []
        self._pending_items = 0
        self._first_at = 0.0
        self._wake = asyncio.Event()  # something is pending (or closing)
        self._full = asyncio.Event()  # max_batch reached (or closing)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Sink calls in flight at once (flush() and the loop share the bound).
        self._slots = asyncio.Semaphore(max_concurrent)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.flushes = 0

    @property
    def pending(self) -> int:
        """Items waiting for a flush."""
        return self._pending_items

    async def add(self, items: Sequence[T], *, start_by: float | None = None) -> None:
        """Queue ``items`` and return once the batch carrying them is written.

        Args:
            items: What to write, all in one batch.
            start_by: When (on ``clock``) the write must have started at the
                latest; ``None``: no bound.

        Raises:
            Unavailable: The batcher is shut down, or ``start_by`` passed first.
            ResourceExhausted: ``max_pending`` items are already waiting.
            Exception: Whatever the sink raised for the batch.
        """
        if self._closing:
            raise Unavailable("event ingestion is shutting down; retry on another instance")
        if not items:
            return
        if self._pending_items + len(items) > self._max_pending:
            raise ResourceExhausted(
                f"{self._pending_items} events are waiting for ClickHouse; retry shortly",
                metadata={"pending": str(self._pending_items)},
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._first_at = self._clock()
        self._pending.append(_Pending(items, done, start_by))
        self._pending_items += len(items)
        self._wake.set()
        if self._pending_items >= self._max_batch:
            self._full.set()
        self._ensure_running()
        # shield: cancelling one caller must not cancel the shared future.
        await asyncio.shield(done)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-batcher")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                continue
            if not self._closing and self._pending_items < self._max_batch:
                remaining = self._first_at + self._max_delay - self._clock()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
            # A free slot first, then take: what is taken starts at once, and
            # while every slot is busy the next batch keeps growing.
            await self._slots.acquire()
            taken = self._take()
            if not taken:
                self._slots.release()
                continue
            task = asyncio.create_task(self._flush_taken(taken), name="event-insert")
            self._in_flight.add(task)
            task.add_done_callback(self._flushed)

    def _take(self) -> list[_Pending[T]]:
        """Whole submissions, oldest first, up to ``max_batch`` items (at least one)."""
        self._expire()
        taken: list[_Pending[T]] = []
        count = 0
        while self._pending and (
            not taken or count + len(self._pending[0].items) <= self._max_batch
        ):
            entry = self._pending.pop(0)
            taken.append(entry)
            count += len(entry.items)
        self._pending_items -= count
        if self._pending:
            # The rest waited since before this flush: flush it as soon as possible.
            self._first_at = self._clock() - self._max_delay
        if self._pending_items < self._max_batch and not self._closing:
            self._full.clear()
        if not self._pending and not self._closing:
            self._wake.clear()
        return taken

    def _expire(self) -> None:
        """Fail the submissions whose write can no longer start in time."""
        now = self._clock()
        late = [e for e in self._pending if e.start_by is not None and e.start_by < now]
        if not late:
            return
        expired = {id(e) for e in late}
        self._pending = [e for e in self._pending if id(e) not in expired]
        for entry in late:
            self._pending_items -= len(entry.items)
            if not entry.done.done():
                entry.done.set_exception(
                    Unavailable(
                        f"{len(entry.items)} events waited too long for ClickHouse and were "
                        "not stored; retry them",
                        reason="INGEST_QUEUE_TIMEOUT",
                        metadata={"store": "clickhouse"},
                    )
                )
                entry.done.exception()  # retrieved: a cancelled caller never awaits it
        log.warning("%d event submissions expired before their insert started", len(late))

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _flush_once(self) -> None:
        async with self._slots:
            await self._flush_taken(self._take())

    async def _flush_taken(self, taken: list[_Pending[T]]) -> None:
        if not taken:
            return
        batch = [item for entry in taken for item in entry.items]
        self.flushes += 1
        try:
            await self._sink(batch)
        except Exception as exc:
            log.warning("insert of %d events failed: %s: %s", len(batch), type(exc).__name__, exc)
            for entry in taken:
                if not entry.done.done():
                    entry.done.set_exception(exc)
                    # Mark retrieved: a cancelled caller never awaits it.
                    entry.done.exception()
            return
        for entry in taken:
            if not entry.done.done():
                entry.done.set_result(None)

    async def flush(self) -> None:
        """Write everything pending now (without waiting for the delay)."""
        self._full.set()
        self._wake.set()
        while self._pending:
            await self._flush_once()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def aclose(self) -> None:
        """Refuse new items, flush every pending one and stop."""
        self._closing = True
        self._full.set()
        self._wake.set()
        if self._task is not None and not self._task.done():
            await self._task
        while self._pending:  # the loop never started, or added after it ended
            await self._flush_once()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
