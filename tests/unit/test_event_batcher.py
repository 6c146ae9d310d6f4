"""Group commit with a fake sink: batching, acknowledgement, failure, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.errors import ResourceExhausted, Unavailable
from tests.conditions import eventually


class Sink:
    """Records batches; can fail, or hold a batch until released."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail: Exception | None = None
        self.delay = delay
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(items))

    @property
    def written(self) -> list[int]:
        return [i for b in self.batches for i in b]


async def test_concurrent_adds_share_one_flush() -> None:
    sink = Sink()
    batcher = EventBatcher(sink, max_batch=1000, max_delay_ms=20)
    await asyncio.gather(*(batcher.add([i]) for i in range(200)))
    assert len(sink.batches) == 1
    assert sorted(sink.written) == list(range(200))
    await batcher.aclose()


async def test_full_batch_flushes_without_waiting_for_the_delay() -> None:
    sink = Sink()
    batcher = EventBatcher(sink, max_batch=10, max_delay_ms=60_000)
    async with asyncio.timeout(2):
        await asyncio.gather(*(batcher.add([i, i + 100]) for i in range(5)))
    assert [len(b) for b in sink.batches] == [10]
    await batcher.aclose()


async def test_batches_never_split_a_caller_and_respect_max_batch() -> None:
    sink = Sink(delay=0.01)
    batcher = EventBatcher(sink, max_batch=10, max_delay_ms=5)
    await asyncio.gather(*(batcher.add(list(range(i * 3, i * 3 + 3))) for i in range(20)))
    assert sorted(sink.written) == list(range(60))
    assert all(len(b) <= 10 for b in sink.batches)
    for batch in sink.batches:  # each caller's three items travel together
        assert all(batch[k] // 3 == batch[k + 1] // 3 for k in range(0, len(batch), 3))
    await batcher.aclose()


async def test_ack_waits_for_the_sink() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    batcher = EventBatcher(sink, max_batch=100, max_delay_ms=1)
    task = asyncio.create_task(batcher.add([1]))
    await asyncio.sleep(0.05)
    assert not task.done()  # the insert has not finished: no acknowledgement
    sink.gate.set()
    await task
    assert sink.written == [1]
    await batcher.aclose()


async def test_failure_reaches_every_caller_of_the_batch_only() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    batcher = EventBatcher(sink, max_batch=100, max_delay_ms=1)
    sink.fail = ConnectionError("clickhouse down")
    first = [asyncio.create_task(batcher.add([i])) for i in range(5)]
    await sink.entered.wait()  # the first batch is in the sink, held by the gate
    second = [asyncio.create_task(batcher.add([i])) for i in range(10, 13)]
    sink.gate.set()
    results = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    sink.fail = None
    await asyncio.gather(*second)
    assert sorted(sink.written) == [10, 11, 12]
    await batcher.aclose()


async def test_close_flushes_pending_and_refuses_new() -> None:
    sink = Sink()
    batcher = EventBatcher(sink, max_batch=1000, max_delay_ms=60_000)
    tasks = [asyncio.create_task(batcher.add([i])) for i in range(7)]
    await asyncio.sleep(0)
    assert batcher.pending == 7 and not sink.batches
    await batcher.aclose()
    await asyncio.gather(*tasks)
    assert sorted(sink.written) == list(range(7))
    with pytest.raises(Unavailable):
        await batcher.add([99])


async def test_explicit_flush() -> None:
    sink = Sink()
    batcher = EventBatcher(sink, max_batch=1000, max_delay_ms=60_000)
    task = asyncio.create_task(batcher.add([1, 2]))
    await asyncio.sleep(0)
    await batcher.flush()
    await task
    assert sink.batches == [[1, 2]]
    await batcher.aclose()


async def test_cancelled_caller_does_not_cancel_the_flush() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    batcher = EventBatcher(sink, max_batch=1000, max_delay_ms=1)
    task = asyncio.create_task(batcher.add([5]))
    other = asyncio.create_task(batcher.add([6]))
    await sink.entered.wait()  # the flush carrying both is in the sink
    task.cancel()
    sink.gate.set()
    await other
    assert sorted(sink.written) == [5, 6]
    await batcher.aclose()


async def test_too_many_pending_is_refused() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    batcher = EventBatcher(sink, max_batch=10, max_delay_ms=1, max_pending=20)
    held = [asyncio.create_task(batcher.add(list(range(10)))) for _ in range(2)]
    await sink.entered.wait()  # one batch of 10 in the sink; 10 pending
    third = asyncio.create_task(batcher.add(list(range(10))))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):
        await batcher.add([1])
    sink.gate.set()
    await asyncio.gather(*held, third)
    await batcher.aclose()


async def test_one_sink_call_at_a_time() -> None:
    active = 0
    peak = 0

    async def sink(items: Sequence[int]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        active -= 1

    batcher = EventBatcher(sink, max_batch=5, max_delay_ms=1)
    adds = [asyncio.create_task(batcher.add([i])) for i in range(50)]
    await asyncio.sleep(0.002)
    await asyncio.gather(batcher.flush(), *adds)
    assert peak == 1
    await batcher.aclose()


async def test_items_whose_write_cannot_start_by_their_deadline_are_failed_not_written() -> None:
    now = [0.0]
    sink = Sink()
    sink.gate = asyncio.Event()
    batcher = EventBatcher(sink, max_batch=10, max_delay_ms=0, clock=lambda: now[0])
    first = asyncio.create_task(batcher.add([1]))
    await sink.entered.wait()  # the first write is in progress, held at the gate
    late = asyncio.create_task(batcher.add([2], start_by=5.0))
    on_time = asyncio.create_task(batcher.add([3], start_by=50.0))
    await asyncio.sleep(0)
    now[0] = 10.0  # the held write outlasted the first deadline
    sink.gate.set()
    await first
    await on_time
    with pytest.raises(Unavailable) as caught:
        await late
    assert caught.value.reason == "INGEST_QUEUE_TIMEOUT"
    assert sink.written == [1, 3]
    assert batcher.pending == 0
    await batcher.aclose()


async def test_up_to_max_concurrent_inserts_run_at_once_and_the_next_batch_grows() -> None:
    started: list[list[int]] = []
    gates = [asyncio.Event() for _ in range(3)]

    async def sink(batch: Sequence[int]) -> None:
        index = len(started)
        started.append(list(batch))
        await gates[index].wait()

    batcher: EventBatcher[int] = EventBatcher(sink, max_batch=100, max_delay_ms=0, max_concurrent=2)
    first = asyncio.create_task(batcher.add([1]))
    await eventually(lambda: len(started) == 1, "first insert started")
    second = asyncio.create_task(batcher.add([2]))
    await eventually(lambda: len(started) == 2, "second insert runs beside the first")
    later = [asyncio.create_task(batcher.add([n])) for n in (3, 4, 5)]
    await asyncio.sleep(0.05)  # both slots busy: nothing else starts
    assert len(started) == 2
    gates[0].set()
    await first
    await eventually(lambda: len(started) == 3, "a slot freed: the waiting items go as one batch")
    assert sorted(started[2]) == [3, 4, 5]
    gates[1].set()
    gates[2].set()
    await asyncio.gather(second, *later)
    await batcher.aclose()
