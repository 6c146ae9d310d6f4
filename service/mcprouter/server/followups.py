"""Follow-ups of committed writes: started at once, retried until they succeed.

A write that reached its store is answered STORED even when what must follow
it (a cache invalidation, a generation bump, marking dedup records done)
fails because Redis is down: failing the RPC would invite a retry of a write
that already happened. What must follow is therefore not the RPC's business
once the store committed:

- it runs in a task of its own, which the caller's cancellation or deadline
  cannot reach (the caller only waits, shielded, for its first attempt);
- a failed attempt is retried with capped backoff for as long as the process
  lives, because giving up would leave the cache wrong until a TTL (hours);
- at shutdown every pending follow-up gets one last bounded attempt, and any
  that still fails is logged by name as lost.

Follow-ups are coalesced by name: a request made while an attempt of the same
name is running gets an attempt that *starts* after the request, so a write
committed during an invalidation's attempt is never covered by that attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Attempt = Callable[[], Awaitable[object]]

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.0
FINAL_ATTEMPT_S = 2.0


@dataclass(slots=True)
class _Job:
    attempt: Attempt
    requested: int = 0  # requests made so far
    waiters: list[tuple[int, asyncio.Future[bool]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    failures: int = 0


class FollowUps:
    """Named follow-ups, each retried until an attempt starting after its request succeeds."""

    def __init__(
        self,
        *,
        first_delay_s: float = FIRST_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        final_attempt_s: float = FINAL_ATTEMPT_S,
    ) -> None:
        """Configure the retry schedule.

        Args:
            first_delay_s: Wait after the first failed attempt; doubled after each failure.
            max_delay_s: Longest wait between attempts (how soon after Redis
                recovers a pending invalidation lands).
            final_attempt_s: Bound on the last attempt at shutdown.
        """
        self._first_delay = first_delay_s
        self._max_delay = max_delay_s
        self._final = final_attempt_s
        self._jobs: dict[str, _Job] = {}
        self._closed = False

    def __contains__(self, name: object) -> bool:
        """Whether a follow-up of that name has not succeeded yet."""
        return name in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def pending(self) -> list[str]:
        """Names of the follow-ups that have not succeeded yet."""
        return list(self._jobs)

    async def run(self, name: str, attempt: Attempt) -> bool:
        """Request ``attempt`` under ``name``; wait for the first attempt that starts after now.

        The attempt runs in a task this object owns, so cancelling the caller
        leaves it running; when it fails it is retried in the background.

        Returns:
            Whether that first attempt succeeded (else it is being retried).
        """
        return await asyncio.shield(self.request(name, attempt))

    def request(self, name: str, attempt: Attempt) -> asyncio.Future[bool]:
        """Like ``run``, without waiting: the future tells how the first attempt went."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            log.error("follow-up %s requested after shutdown began: not run", name)
            done.set_result(False)
            return done
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = _Job(attempt)
        job.requested += 1
        job.waiters.append((job.requested, done))
        if job.task is None:
            job.task = asyncio.create_task(self._run(name, job), name=f"follow-up {name}")
        return done

    async def _run(self, name: str, job: _Job) -> None:
        delay = self._first_delay
        while True:
            covered = job.requested
            ok = await self._attempt(name, job)
            self._settle(job, covered, ok)
            if ok and job.requested == covered:
                del self._jobs[name]
                return
            if not ok:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)

    async def _attempt(self, name: str, job: _Job) -> bool:
        try:
            await job.attempt()
        except Exception as exc:
            job.failures += 1
            # First failure, then every 30th (about every 30 s at the cap): visible, not noisy.
            if job.failures % 30 == 1:
                log.warning(
                    "%s failed (attempt %d), retrying: %s: %s",
                    name,
                    job.failures,
                    type(exc).__name__,
                    exc,
                )
            return False
        if job.failures:
            log.info("%s succeeded after %d failed attempts", name, job.failures)
            job.failures = 0
        return True

    @staticmethod
    def _settle(job: _Job, covered: int, ok: bool) -> None:
        """Tell the waiters whose request the attempt started after how it went."""
        still: list[tuple[int, asyncio.Future[bool]]] = []
        for number, future in job.waiters:
            if number <= covered:
                if not future.done():
                    future.set_result(ok)
            else:
                still.append((number, future))
        job.waiters = still

    async def aclose(self) -> None:
        """Stop retrying; give each pending follow-up one last bounded attempt."""
        self._closed = True
        jobs = list(self._jobs.items())
        for _, job in jobs:
            if job.task is not None:
                job.task.cancel()
        for _, job in jobs:
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task

        async def last_try(name: str, job: _Job) -> None:
            ok = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._final):
                    ok = await self._attempt(name, job)
            self._settle(job, job.requested, ok)
            if ok:
                self._jobs.pop(name, None)
            else:
                log.error("follow-up %s is lost: it did not succeed before shutdown", name)

        await asyncio.gather(*(last_try(name, job) for name, job in jobs))
