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
   the follow-up still runs, now and once more after ``AMBIGUOUS_RECHECK_S``
   (a commit the server finishes after our first invalidation is covered by
   the second), and the caller gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from mcprouter.server import budget
from mcprouter.server.errors import RouterError, Unavailable

T = TypeVar("T")

AMBIGUOUS_RECHECK_S = 1.0


def nothing_written(exc: BaseException) -> bool:
    """Whether a failed write proves the store changed nothing.

    A ``RouterError`` the store raised on purpose (bad input, version conflict,
    not found) was decided before anything was written; ``Unavailable`` and
    anything unexpected may have happened during or after the commit.
    """
    return isinstance(exc, RouterError) and not isinstance(exc, Unavailable)


class Writes:
    """Runs writes in tasks it owns; ``aclose`` waits for those still running."""

    def __init__(self, *, recheck_s: float = AMBIGUOUS_RECHECK_S) -> None:
        self._recheck_s = recheck_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[asyncio.TimerHandle, Callable[[], None]] = {}

    async def run(
        self,
        commit: Callable[[], Awaitable[T]],
        follow_up: Callable[[], Coroutine[Any, Any, object]],
    ) -> T:
        """Commit, then follow up; the caller may be cancelled, the pair is not.

        Returns:
            What ``commit`` returned, once ``follow_up`` returned.

        Raises:
            Whatever ``commit`` raised (the follow-up ran too when it may have committed).
        """
        deadline = budget.current()
        task = asyncio.create_task(self._write(commit, follow_up, deadline), name="write")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    async def _write(
        self,
        commit: Callable[[], Awaitable[T]],
        follow_up: Callable[[], Coroutine[Any, Any, object]],
        deadline: float | None,
    ) -> T:
        budget.set_deadline(deadline)  # the caller's budget still bounds the store call
        try:
            result = await commit()
        except BaseException as exc:
            if not nothing_written(exc):
                await follow_up()
                self._recheck(follow_up)
            raise
        await follow_up()
        return result

    def _recheck(self, follow_up: Callable[[], Coroutine[Any, Any, object]]) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(handle, None)
            task: asyncio.Task[object] = loop.create_task(follow_up(), name="write recheck")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

        handle = loop.call_later(self._recheck_s, fire)
        self._timers[handle] = fire

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a caller that was cancelled never retrieves it

    async def aclose(self) -> None:
        """Wait for the writes still running; fire pending rechecks at once."""
        for handle, fire in list(self._timers.items()):
            handle.cancel()
            fire()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
