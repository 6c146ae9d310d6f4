"""One call for what many concurrent callers submit at the same moment.

When a group-committed insert succeeds, every request it carried resumes in
the same turn of the event loop and has the same Redis work to do (mark its
dedup records done, count its events). ``Coalescer`` gathers what is
submitted during one turn and runs ``flush`` once for all of it on the next
turn, so N requests cost one round trip instead of N. Each caller waits for
the flush that carries its item and sees its outcome (its exception too).

The flush runs in a task of its own: cancelling a caller never cancels the
work done for the others. Items submitted while a flush runs go to the next
one, which starts on the following turn without waiting for the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Batches the items submitted during one event-loop turn into one ``flush`` call."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], *, name: str) -> None:
        self._flush = flush
        self._name = name
        self._items: list[T] = []
        self._done: asyncio.Future[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> None:
        """Add ``item`` to the next flush and wait for that flush (shielded)."""
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            loop.call_soon(self._start)
        self._items.append(item)
        await asyncio.shield(self._done)

    def _start(self) -> None:
        items, done = self._items, self._done
        self._items, self._done = [], None
        assert done is not None
        task = asyncio.create_task(self._run(items, done), name=self._name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, items: list[T], done: asyncio.Future[None]) -> None:
        # Every waiter gets the flush's outcome (``shield`` marks it retrieved
        # even when all of them were cancelled).
        try:
            await self._flush(items)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    async def aclose(self) -> None:
        """Wait for the flushes in flight (and one pending start)."""
        while self._done is not None or self._running:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            else:
                await asyncio.sleep(0)
