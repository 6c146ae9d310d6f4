"""Client-side retries of ``RouteData`` calls (service config cannot tell reads from writes).

One deadline covers every attempt: each attempt gets the time that is left,
and no retry starts once its backoff would pass the deadline. Only
``UNAVAILABLE`` is retried (reasons included: ``STORE_UNAVAILABLE``,
``EVENTS_IN_FLIGHT``...); every other status is final. The async and the sync
client share the schedule below and differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mcprouter.client._config import RetryPolicy

T = TypeVar("T")

Attempt = Callable[[float], Awaitable[T]]
"""One async call attempt, given the seconds it may take."""

SyncAttempt = Callable[[float], T]
"""One blocking call attempt, given the seconds it may take."""

Clock = Callable[[], float]
Jitter = Callable[[float], float]


def _full_jitter(bound: float) -> float:
    return random.uniform(0.0, bound)


class Schedule:
    """When the next attempt of one call may start, if at all."""

    def __init__(
        self, budget: float, policy: RetryPolicy | None, clock: Clock, jitter: Jitter
    ) -> None:
        self._deadline = clock() + budget
        self._policy = policy
        self._clock = clock
        self._jitter = jitter
        self.number = 1

    def remaining(self) -> float:
        """Seconds the next attempt may take."""
        return max(self._deadline - self._clock(), 0.0)

    def wait_after(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up with ``error``."""
        policy = self._policy
        # Both APIs' failed calls have code(); grpc.RpcError itself does not declare it.
        code: Any = getattr(error, "code", lambda: None)()
        if policy is None or self.number >= policy.max_attempts:
            return None
        if code != grpc.StatusCode.UNAVAILABLE:
            return None
        wait = self._jitter(policy.backoff_bound(self.number))
        # A retry needs time for its own round trip, not just the wait.
        if self._clock() + wait >= self._deadline:
            return None
        self.number += 1
        return wait


async def call_with_retries(
    attempt: Attempt[T],
    *,
    budget: float,
    policy: RetryPolicy | None,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Jitter = _full_jitter,
) -> T:
    """Run ``attempt`` until it succeeds, fails for good, or the deadline is near.

    Args:
        attempt: Makes one call with the given timeout (seconds).
        budget: The whole call's time in seconds, shared by every attempt.
        policy: How to back off; ``None`` makes exactly one attempt.
        clock: Monotonic seconds (injected by tests).
        sleep: Waits between attempts (injected by tests).
        jitter: Picks a wait in ``[0, bound]`` (injected by tests).

    Returns:
        The first successful answer.

    Raises:
        grpc.RpcError: The last attempt's error, when it was not
            ``UNAVAILABLE``, attempts ran out, or the next backoff would pass
            the deadline.
    """
    schedule = Schedule(budget, policy, clock, jitter)
    while True:
        try:
            return await attempt(schedule.remaining())
        except grpc.RpcError as error:
            wait = schedule.wait_after(error)
            if wait is None:
                raise
        await sleep(wait)


def call_with_retries_sync(
    attempt: SyncAttempt[T],
    *,
    budget: float,
    policy: RetryPolicy | None,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    jitter: Jitter = _full_jitter,
) -> T:
    """The blocking twin of ``call_with_retries``, for ``SyncRouterClient``."""
    schedule = Schedule(budget, policy, clock, jitter)
    while True:
        try:
            return attempt(schedule.remaining())
        except grpc.RpcError as error:
            wait = schedule.wait_after(error)
            if wait is None:
                raise
        sleep(wait)
