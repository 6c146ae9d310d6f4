"""Writes: which failed commits still run the follow-up, the recheck, shutdown.

The commit and the follow-up are plain coroutines: ``Writes`` only orders
them (the stores' own tests cover what they do).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from mcprouter.server import budget, errors
from mcprouter.server.writes import Writes, nothing_written
from tests.conditions import eventually


class FollowUp:
    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1


def failing(exc: BaseException) -> Callable[[], Awaitable[None]]:
    async def commit() -> None:
        raise exc

    return commit


def test_only_a_deliberate_router_error_proves_nothing_was_written() -> None:
    assert nothing_written(errors.NotFound("no such experiment"))
    assert not nothing_written(errors.Unavailable("connection lost during COMMIT"))
    assert not nothing_written(OSError("connection reset"))
    assert not nothing_written(asyncio.CancelledError())


async def test_a_committed_write_follows_up_once_and_returns_the_result() -> None:
    writes, follow_up = Writes(recheck_s=3600), FollowUp()

    async def commit() -> str:
        return "v2"

    assert await writes.run(commit, follow_up) == "v2"
    assert follow_up.runs == 1
    await writes.aclose()
    assert follow_up.runs == 1


async def test_a_rejected_write_does_not_follow_up() -> None:
    writes, follow_up = Writes(recheck_s=0.01), FollowUp()
    with pytest.raises(errors.NotFound):
        await writes.run(failing(errors.NotFound("gone")), follow_up)
    await writes.aclose()
    assert follow_up.runs == 0


@pytest.mark.parametrize("exc", [errors.Unavailable("timeout in COMMIT"), OSError("reset")])
async def test_an_ambiguous_failure_follows_up_now_and_once_more_later(
    exc: BaseException,
) -> None:
    writes, follow_up = Writes(recheck_s=0.01), FollowUp()
    with pytest.raises(type(exc)):
        await writes.run(failing(exc), follow_up)
    assert follow_up.runs == 1
    await eventually(lambda: follow_up.runs == 2, "the recheck")
    await writes.aclose()  # the recheck fired already: not again
    assert follow_up.runs == 2


async def test_aclose_fires_a_pending_recheck_at_once() -> None:
    writes, follow_up = Writes(recheck_s=3600), FollowUp()
    with pytest.raises(errors.Unavailable):
        await writes.run(failing(errors.Unavailable("timeout in COMMIT")), follow_up)
    await writes.aclose()
    assert follow_up.runs == 2


async def test_a_cancelled_caller_does_not_cut_commit_and_follow_up() -> None:
    writes, follow_up = Writes(recheck_s=3600), FollowUp()
    gate, committed = asyncio.Event(), asyncio.Event()

    async def commit() -> str:
        await gate.wait()
        committed.set()
        return "v2"

    caller = asyncio.create_task(writes.run(commit, follow_up))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    await writes.aclose()  # waits for the write still running
    assert committed.is_set()
    assert follow_up.runs == 1


async def test_the_callers_deadline_bounds_the_commit() -> None:
    writes, follow_up = Writes(), FollowUp()
    seen: list[float | None] = []

    async def commit() -> None:
        seen.append(budget.current())

    deadline = time.monotonic() + 30
    budget.set_deadline(deadline)
    try:
        await writes.run(commit, follow_up)
    finally:
        budget.set_deadline(None)
    assert seen == [deadline]
    await writes.aclose()


async def test_aclose_waits_for_a_failing_write_without_raising_its_error() -> None:
    writes, follow_up = Writes(recheck_s=3600), FollowUp()
    gate = asyncio.Event()

    async def commit() -> None:
        await gate.wait()
        raise errors.NotFound("gone")

    caller = asyncio.create_task(writes.run(commit, follow_up))
    await asyncio.sleep(0)
    caller.cancel()  # nobody awaits the write's outcome now
    closing = asyncio.create_task(writes.aclose())
    await asyncio.sleep(0)
    gate.set()
    await closing
    assert follow_up.runs == 0
    with pytest.raises(asyncio.CancelledError):
        await caller
