"""Client-side retries of ``RouteData`` reads (service config cannot tell them from writes).

One deadline covers every attempt: each attempt gets the time that is left,
and no retry starts once its backoff would pass the deadline. Only
``UNAVAILABLE`` is retried; every other status is final.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from mcprouter.client._config import RetryPolicy

T = TypeVar("T")

Attempt = Callable[[float], Awaitable[T]]
"""One call attempt, given the seconds it may take."""


async def call_with_retries(
    attempt: Attempt[T],
    *,
    budget: float,
    policy: RetryPolicy | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Callable[[float], float] = lambda bound: random.uniform(0.0, bound),
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
        grpc.aio.AioRpcError: The last attempt's error, when it was not
            ``UNAVAILABLE``, attempts ran out, or the next backoff would pass
            the deadline.
    """
    deadline = clock() + budget
    max_attempts = policy.max_attempts if policy is not None else 1
    number = 1
    while True:
        try:
            return await attempt(max(deadline - clock(), 0.0))
        except grpc.aio.AioRpcError as error:
            if (
                policy is None
                or number >= max_attempts
                or error.code() != grpc.StatusCode.UNAVAILABLE
            ):
                raise
            wait = jitter(policy.backoff_bound(number))
            # A retry needs time for its own round trip, not just the wait.
            if clock() + wait >= deadline:
                raise
        await sleep(wait)
        number += 1
