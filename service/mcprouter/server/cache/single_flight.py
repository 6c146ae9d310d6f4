"""In-process single-flight: concurrent callers for one key share one load.

Each load runs in its own task and callers await it through
``asyncio.shield``, so a caller that is cancelled (its RPC hit a deadline, its
client went away) leaves the load running for everyone else who waits on it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one running load per key; later callers join the running one."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def start(
        self, key: str, factory: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[asyncio.Task[T], bool]:
        """Return the running load of ``key``, starting ``factory()`` if there is none.

        Args:
            key: What the load is for.
            factory: Builds the load coroutine; called only when a new load starts.

        Returns:
            The task, and whether this call started it.
        """
        task = self._tasks.get(key)
        if task is not None:
            return task, False
        task = asyncio.get_running_loop().create_task(factory(), name=f"single-flight {key}")
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._finished, key))
        return task, True

    async def do(self, key: str, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Wait for the load of ``key``, starting it if needed; share its result or error."""
        task, _ = self.start(key, factory)
        return await asyncio.shield(task)

    def get(self, key: str) -> asyncio.Task[T] | None:
        """The running load of ``key``, if any."""
        return self._tasks.get(key)

    def is_current(self, key: str, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is still the registered load of ``key`` (not forgotten)."""
        return task is not None and self._tasks.get(key) is task

    def forget(self, key: str) -> None:
        """Detach the running load of ``key``.

        Its waiters still get its result, but new callers start a new load.
        """
        self._tasks.pop(key, None)

    def matching(self, patterns: Sequence[str]) -> list[str]:
        """Keys with a registered load that match any Redis-style glob pattern."""
        if not patterns:
            return []
        return [k for k in self._tasks if any(fnmatch.fnmatchcase(k, p) for p in patterns)]

    def pending(self) -> list[asyncio.Task[T]]:
        """The loads still registered."""
        return list(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            # Every waiter may have been cancelled; retrieving the exception
            # keeps asyncio from logging "exception was never retrieved".
            task.exception()
