"""Follow-ups of committed writes: retried until they succeed, never cut by the caller."""

from __future__ import annotations

import asyncio

import pytest

from mcprouter.server.followups import FollowUps


class Flaky:
    """Fails ``failures`` times, then succeeds; records every call."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.succeeded = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("down")
        self.succeeded.set()


async def test_first_attempt_outcome_is_reported_and_retries_continue() -> None:
    followups = FollowUps(first_delay_s=0, max_delay_s=0)
    flaky = Flaky(failures=3)
    assert await followups.run("a", flaky) is False
    assert "a" in followups
    await flaky.succeeded.wait()
    assert flaky.calls == 4
    await asyncio.sleep(0)
    assert "a" not in followups
    await followups.aclose()


async def test_keeps_retrying_well_past_a_minute_of_attempts() -> None:
    # The old schedule gave up after 7 tries; 200 failures must not stop it.
    followups = FollowUps(first_delay_s=0, max_delay_s=0)
    flaky = Flaky(failures=200)
    await followups.run("a", flaky)
    await flaky.succeeded.wait()
    assert flaky.calls == 201
    await followups.aclose()


async def test_a_cancelled_caller_does_not_cancel_the_follow_up() -> None:
    followups = FollowUps()
    started = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def slow() -> None:
        started.set()
        await release.wait()
        finished.set()

    caller = asyncio.create_task(followups.run("a", slow))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await finished.wait()
    await followups.aclose()


async def test_a_request_during_an_attempt_gets_an_attempt_that_starts_after_it() -> None:
    followups = FollowUps()
    gate, running = asyncio.Event(), asyncio.Event()
    starts: list[int] = []

    async def attempt() -> None:
        starts.append(len(starts))
        running.set()
        if len(starts) == 1:
            await gate.wait()

    first = asyncio.create_task(followups.run("a", attempt))
    await running.wait()
    second = asyncio.create_task(followups.run("a", attempt))
    await asyncio.sleep(0)
    gate.set()
    assert await first is True
    assert await second is True
    assert starts == [0, 1]  # the second request was not covered by the first attempt
    await followups.aclose()


async def test_requests_during_an_attempt_share_one_later_attempt() -> None:
    """Follow-ups coalesce by name: three requests made while an attempt runs
    get one attempt after it, never attempts of their own running beside it."""
    followups = FollowUps()
    gate, first_running = asyncio.Event(), asyncio.Event()
    calls, running, most_at_once = 0, 0, 0

    async def attempt() -> None:
        nonlocal calls, running, most_at_once
        calls += 1
        running += 1
        most_at_once = max(most_at_once, running)
        try:
            if calls == 1:
                first_running.set()
                await gate.wait()
        finally:
            running -= 1

    first = asyncio.create_task(followups.run("a", attempt))
    await first_running.wait()
    later = [asyncio.create_task(followups.run("a", attempt)) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *later) == [True, True, True, True]
    assert (calls, most_at_once) == (2, 1)
    await followups.aclose()


async def test_shutdown_makes_a_last_attempt_of_each_pending_follow_up() -> None:
    followups = FollowUps(first_delay_s=3600, max_delay_s=3600)
    flaky = Flaky(failures=1)
    assert await followups.run("a", flaky) is False  # now sleeping an hour before retrying
    await followups.aclose()
    assert flaky.calls == 2
    assert "a" not in followups


async def test_a_follow_up_still_failing_at_shutdown_is_logged_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    followups = FollowUps(first_delay_s=3600, max_delay_s=3600)
    always = Flaky(failures=10**6)
    await followups.run("invalidate experiment:x", always)
    await followups.aclose()
    assert always.calls == 2
    assert any("invalidate experiment:x is lost" in r.getMessage() for r in caplog.records)
    assert await followups.run("late", Flaky(0)) is False  # refused once closed
