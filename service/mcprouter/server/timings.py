"""Store latency per store and operation, kept as plain counters.

``instrument`` wraps named coroutine methods of a store *instance* (nothing
in the store modules changes, and nothing else notices), so every call of
``PostgresStore.get_experiment`` and the like is timed where the store is
called, retries and cache hits excluded. ``StoreTimings`` keeps cumulative
histogram buckets as integers; ``ServerCollector`` turns them into
Prometheus histograms at scrape time, like every other counter the server
keeps. The app wires this up, so the figures exist whether or not
``/metrics`` is on (a few integer additions per store call).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Seconds: a primary-key lookup takes ~1 ms, analytics and vector searches
# tens to hundreds, an overloaded store seconds.
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(slots=True)
class Timing:
    """One (store, operation): per-bucket counts (non-cumulative), sum, errors."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(STORE_BUCKETS) + 1))
    total: float = 0.0
    errors: int = 0

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last, as Prometheus wants them."""
        pairs, running = [], 0
        for bound, count in zip((*map(str, STORE_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class StoreTimings:
    """Latency of every instrumented store call, by store and operation."""

    def __init__(self) -> None:
        self._timings: dict[tuple[str, str], Timing] = {}

    def declare(self, store: str, operation: str) -> Timing:
        """Make the series exist (zeros) before the first call."""
        return self._timings.setdefault((store, operation), Timing())

    def observe(self, timing: Timing, seconds: float, *, failed: bool) -> None:
        """Record one call."""
        timing.counts[bisect.bisect_left(STORE_BUCKETS, seconds)] += 1
        timing.total += seconds
        if failed:
            timing.errors += 1

    def items(self) -> Iterator[tuple[tuple[str, str], Timing]]:
        """Every (store, operation) and its figures, sorted."""
        yield from sorted(self._timings.items())


def instrument(
    target: object, store: str, operations: Iterable[str], timings: StoreTimings
) -> None:
    """Time each named coroutine method of ``target`` under (``store``, name).

    Raises:
        AttributeError: ``target`` has no such method (a rename must not
            silently stop the measurement).
    """
    for name in operations:
        method: Callable[..., Awaitable[Any]] = getattr(target, name)
        setattr(target, name, _timed(method, timings, timings.declare(store, name)))


def _timed(
    method: Callable[..., Awaitable[Any]], timings: StoreTimings, timing: Timing
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            result = await method(*args, **kwargs)
            failed = False
            return result
        finally:
            timings.observe(timing, time.perf_counter() - started, failed=failed)

    return timed
