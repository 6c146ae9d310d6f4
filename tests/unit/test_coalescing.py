"""Coalescer: what is submitted in one event-loop turn goes out in one flush."""

from __future__ import annotations

import asyncio

import pytest

from mcprouter.server.coalescing import Coalescer


class Sink:
    def __init__(self) -> None:
        self.flushes: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.entered: asyncio.Queue[list[int]] = asyncio.Queue()

    async def flush(self, items: list[int]) -> None:
        self.flushes.append(items)
        self.entered.put_nowait(items)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_items_submitted_together_share_one_flush() -> None:
    sink = Sink()
    coalescer = Coalescer(sink.flush, name="test")
    await asyncio.gather(*(coalescer.submit(i) for i in range(10)))
    assert sink.flushes == [list(range(10))]
    await coalescer.submit(10)
    assert sink.flushes == [list(range(10)), [10]]


async def test_every_caller_gets_the_flush_error() -> None:
    sink = Sink()
    sink.fail = RuntimeError("redis down")
    coalescer = Coalescer(sink.flush, name="test")
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError] * 3
    assert len(sink.flushes) == 1


async def test_a_cancelled_caller_leaves_the_flush_running_for_the_others() -> None:
    sink = Sink()
    sink.gate.clear()
    coalescer = Coalescer(sink.flush, name="test")
    first = asyncio.create_task(coalescer.submit(1))
    second = asyncio.create_task(coalescer.submit(2))
    assert await sink.entered.get() == [1, 2]  # the flush started and waits on the gate
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    sink.gate.set()
    await second
    assert sink.flushes == [[1, 2]]


async def test_items_submitted_during_a_flush_go_to_the_next_one() -> None:
    sink = Sink()
    sink.gate.clear()
    coalescer = Coalescer(sink.flush, name="test")
    first = asyncio.create_task(coalescer.submit(1))
    assert await sink.entered.get() == [1]
    second = asyncio.create_task(coalescer.submit(2))
    # The second flush starts while the first still waits on the gate.
    assert await sink.entered.get() == [2]
    sink.gate.set()
    await asyncio.gather(first, second)
    assert sink.flushes == [[1], [2]]


async def test_aclose_waits_for_a_pending_and_a_running_flush() -> None:
    sink = Sink()
    sink.gate.clear()
    coalescer = Coalescer(sink.flush, name="test")
    waiter = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)  # submitted; its flush not started yet
    closing = asyncio.create_task(coalescer.aclose())
    assert await sink.entered.get() == [1]
    assert not closing.done()
    sink.gate.set()
    await closing
    assert waiter.done() and sink.flushes == [[1]]
