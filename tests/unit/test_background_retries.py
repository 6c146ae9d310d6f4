"""Background retries of follow-ups after committed writes."""

from __future__ import annotations

import asyncio

from mcprouter.server.retries import BackgroundRetries


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.done = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("down")
        self.done.set()


async def test_retries_until_success_and_once_per_name() -> None:
    retries = BackgroundRetries(delays=(0, 0, 0, 0), retry_on=(ConnectionError,))
    flaky = Flaky(failures=2)
    retries.start("bump a", flaky, gave_up="-")
    retries.start("bump a", flaky, gave_up="-")  # already pending: not started twice
    assert "bump a" in retries
    await flaky.done.wait()
    assert flaky.calls == 3
    await asyncio.sleep(0)
    assert "bump a" not in retries
    await retries.aclose()


async def test_gives_up_after_the_delays_and_stops_on_other_errors() -> None:
    retries = BackgroundRetries(delays=(0, 0), retry_on=(ConnectionError,))
    always = Flaky(failures=100)
    retries.start("a", always, gave_up="-")

    async def broken() -> None:
        raise ValueError("a bug")

    retries.start("b", broken, gave_up="-")
    for _ in range(100):
        if "a" not in retries and "b" not in retries:
            break
        await asyncio.sleep(0)
    assert always.calls == 2
    assert "a" not in retries and "b" not in retries


async def test_then_every_keeps_going_and_aclose_cancels() -> None:
    retries = BackgroundRetries(delays=(0,), then_every=0, retry_on=(ConnectionError,))
    flaky = Flaky(failures=5)
    retries.start("x", flaky, gave_up="-")
    await flaky.done.wait()
    assert flaky.calls == 6
    stuck = BackgroundRetries(delays=(3600,), retry_on=(ConnectionError,))
    stuck.start("y", Flaky(failures=0), gave_up="-")
    await stuck.aclose()
    assert "y" not in stuck
