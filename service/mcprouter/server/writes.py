"""Store writes that the caller's cancellation cannot cut between commit and follow-up.

gRPC cancels a call's task when its client goes away or its deadline passes.
A write cancelled after its store committed but before its invalidation ran
would leave the old value cached for a whole TTL. So a write runs here, in a
task of its own, *with* the caller's deadline (its store call still ends
cleanly through its own timeout) but *without* the caller's cancellation:

1. ``commit()`` writes to the store;
2. then ``follow_up()`` runs (it hands its work to ``FollowUps``, which
   retries until Redis takes it) and the caller gets the result;
3. if the commit failed in a way that does not prove nothing was written (a
   timeout or a dropped connection while the statement may have committed),
   the follow-up still runs: now, once the store says the write can no
   longer commit (``settled``, when the store can tell: PostgreSQL waits for
   the server process that ran it to go idle), and once more after
   ``AMBIGUOUS_RECHECK_S``. A commit the server finishes after the first
   invalidation is thus covered within a poll of becoming visible, and the
   caller gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from mcprouter.server import budget
from mcprouter.server.errors import RouterError, Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

AMBIGUOUS_RECHECK_S = 1.0
# How long to keep asking whether an ambiguous write can still commit.
SETTLE_MAX_S = 60.0
SETTLE_RETRY_S = 0.1


def nothing_written(exc: BaseException) -> bool:
    """Whether a failed write proves the store changed nothing.

    A ``RouterError`` the store raised on purpose (bad input, version conflict,
    not found) was decided before anything was written; ``Unavailable`` and
    anything unexpected may have happened during or after the commit.
    """
    return isinstance(exc, RouterError) and not isinstance(exc, Unavailable)


class Writes:
    """Runs writes in tasks it owns; ``aclose`` waits for those still running."""

    def __init__(
        self, *, recheck_s: float = AMBIGUOUS_RECHECK_S, settle_max_s: float = SETTLE_MAX_S
    ) -> None:
        self._recheck_s = recheck_s
        self._settle_max_s = settle_max_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[asyncio.TimerHandle, Callable[[], None]] = {}
        # Waits for ambiguous writes to settle, with the follow-up each one owes.
        self._settling: dict[asyncio.Task[None], Callable[[], Coroutine[Any, Any, object]]] = {}

    async def run(
        self,
        commit: Callable[[], Awaitable[T]],
        follow_up: Callable[[], Coroutine[Any, Any, object]],
        *,
        settled: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Commit, then follow up; the caller may be cancelled, the pair is not.

        ``settled`` runs in the write's context after an ambiguous failure and
        returns once that write can no longer commit (see the module).

        Returns:
            What ``commit`` returned, once ``follow_up`` returned.

        Raises:
            Whatever ``commit`` raised (the follow-up ran too when it may have committed).
        """
        deadline = budget.current()
        task = asyncio.create_task(self._write(commit, follow_up, settled, deadline), name="write")
        self._track(task)
        return await asyncio.shield(task)

    async def _write(
        self,
        commit: Callable[[], Awaitable[T]],
        follow_up: Callable[[], Coroutine[Any, Any, object]],
        settled: Callable[[], Awaitable[None]] | None,
        deadline: float | None,
    ) -> T:
        budget.set_deadline(deadline)  # the caller's budget still bounds the store call
        try:
            result = await commit()
        except BaseException as exc:
            if not nothing_written(exc):
                await follow_up()
                self._recheck(follow_up)
                if settled is not None:
                    # Started here, so it inherits what commit() recorded in the context.
                    task = asyncio.create_task(self._wait_settled(settled), name="write settle")
                    self._settling[task] = follow_up
                    task.add_done_callback(self._settle_done)
            raise
        await follow_up()
        return result

    async def _wait_settled(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Ask until the store can tell, for at most ``settle_max_s``."""
        failures = 0
        try:
            async with asyncio.timeout(self._settle_max_s):
                while True:
                    try:
                        return await settled()
                    except Exception as exc:  # e.g. the store is unreachable: ask again
                        failures += 1
                        if failures == 1:
                            log.warning("cannot tell yet whether a failed write committed: %r", exc)
                        await asyncio.sleep(SETTLE_RETRY_S)
        except TimeoutError:
            log.warning("gave up asking whether a failed write committed; invalidating anyway")

    def _settle_done(self, task: asyncio.Task[None]) -> None:
        """Follow up once the write settled (or the wait ended: cancelled at shutdown)."""
        follow_up = self._settling.pop(task)
        if not task.cancelled():
            task.exception()
        self._track(asyncio.get_running_loop().create_task(follow_up(), name="write settled"))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _recheck(self, follow_up: Callable[[], Coroutine[Any, Any, object]]) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(handle, None)
            self._track(loop.create_task(follow_up(), name="write recheck"))

        handle = loop.call_later(self._recheck_s, fire)
        self._timers[handle] = fire

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a caller that was cancelled never retrieves it

    async def aclose(self) -> None:
        """Wait for the writes still running; fire pending rechecks and settle waits at once."""
        while self._tasks or self._settling or self._timers:
            # Each round: a write that failed meanwhile may have added either.
            for handle, fire in list(self._timers.items()):
                handle.cancel()
                fire()
            for task in self._settling:
                task.cancel()  # no waiting at shutdown: its done callback follows up now
            await asyncio.gather(*self._settling, *self._tasks, return_exceptions=True)
