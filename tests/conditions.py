"""Waiting on a condition instead of sleeping: the one synchronisation tests use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

POLL_S = 0.01
LIMIT_S = 10.0  # generous: a loaded 2-core machine; a condition usually holds at once


async def eventually(
    condition: Callable[[], bool], what: str = "condition", *, limit_s: float = LIMIT_S
) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` if it never does."""
    for _ in range(int(limit_s / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"{what} not reached within {limit_s:g} s")


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], what: str, *, limit_s: float = LIMIT_S
) -> None:
    """``eventually`` for a condition that must be awaited (a Redis read)."""
    for _ in range(int(limit_s / POLL_S)):
        if await condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"{what} not reached within {limit_s:g} s")
