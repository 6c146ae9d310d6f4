"""Background retries of a follow-up that failed after a committed write.

A write that reached its store is answered STORED even when what must follow
it (a cache invalidation, a generation bump, releasing dedup markers) failed
because Redis was down: failing the RPC would invite a retry of a write that
already happened. The follow-up is retried here instead, with backoff, in
tasks this object owns and cancels on ``aclose()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

log = logging.getLogger(__name__)

# 0.5 s, 1 s, 2 s, ... : about a minute in all.
DEFAULT_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class BackgroundRetries:
    """Runs ``attempt`` again after each delay until it succeeds or the delays run out.

    Args:
        delays: Seconds to wait before each retry.
        then_every: If set, keep retrying at this interval after ``delays``
            (for follow-ups whose loss would stay wrong forever).
        retry_on: Exceptions that mean "try again"; any other ends the retries.
    """

    def __init__(
        self,
        *,
        delays: Sequence[float] = DEFAULT_DELAYS_S,
        then_every: float | None = None,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:
        self._delays = tuple(delays)
        self._then_every = then_every
        self._retry_on = retry_on
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, name: object) -> bool:
        """Whether a retry of that name is still pending."""
        return name in self._tasks

    def start(self, name: str, attempt: Callable[[], Awaitable[object]], *, gave_up: str) -> None:
        """Retry ``attempt`` in the background unless a retry named ``name`` is pending."""
        if name in self._tasks:
            return
        task = asyncio.create_task(self._run(name, attempt, gave_up), name=f"retry {name}")
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._finished(name, done))

    async def _run(self, name: str, attempt: Callable[[], Awaitable[object]], gave_up: str) -> None:
        for delay in self._schedule():
            await asyncio.sleep(delay)
            try:
                await attempt()
            except self._retry_on:
                continue
            except Exception:
                log.exception("%s failed for good: %s", name, gave_up)
                return
            log.info("%s succeeded on retry", name)
            return
        log.error("gave up on %s: %s", name, gave_up)

    def _schedule(self) -> Iterator[float]:
        yield from self._delays
        while self._then_every is not None:
            yield self._then_every

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]

    async def aclose(self) -> None:
        """Cancel every pending retry (on shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
