"""The invalidation feed knows when it is alive: a silent connection or a bug turns the L1 off.

Path 8 of the consistency issue: a dropped connection that never reports an
error, or an exception that is not Redis's, must not leave the L1 serving
with no feed behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from mcprouter.server.cache.feed import InvalidationFeed
from mcprouter.server.redis.connection import create_redis
from tests.faults.proxy import DelayingProxy


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} not reached")


async def test_a_connection_that_dies_silently_turns_the_l1_off(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    host = redis_client.connection_pool.connection_kwargs["host"]
    port = redis_client.connection_pool.connection_kwargs["port"]
    states: list[bool] = []
    with DelayingProxy((host, port), delay_s=0.0) as proxy:
        redis = create_redis(
            f"redis://127.0.0.1:{proxy.port}/0", pool_size=4, timeout_s=0.25, pool_timeout_s=0.25
        )
        feed = InvalidationFeed(
            redis,
            f"{namespace}_invalidations",
            apply=lambda keys, patterns, origin: None,
            on_connected=states.append,
            ping_interval_s=0.1,
            reconnect_delay_s=0.05,
        )
        feed.start()
        try:
            await eventually(lambda: feed.connected, "feed connected")
            await asyncio.sleep(0.3)  # quiet, pinged and answered: still up
            assert feed.connected
            proxy.freeze()  # no FIN, no error: the bytes just stop
            await eventually(lambda: not feed.connected, "L1 off after a silent drop")
            assert states[-1] is False
        finally:
            await feed.aclose()
            await redis.aclose()


async def test_a_failure_that_is_not_redis_also_turns_the_l1_off_and_reconnects(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    channel = f"{namespace}_invalidations"
    states: list[bool] = []
    calls = 0

    def apply(keys: list[str], patterns: list[str], origin: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug while applying a message")

    feed = InvalidationFeed(
        redis_client,
        channel,
        apply=apply,
        on_connected=states.append,
        ping_interval_s=0.2,
        reconnect_delay_s=0.05,
    )
    feed.start()
    try:
        await eventually(lambda: feed.connected, "feed connected")
        await redis_client.publish(channel, b'{"keys": ["experiment:a"], "patterns": []}')
        await eventually(lambda: False in states, "L1 off after the failure")
        await eventually(lambda: feed.connected, "feed reconnected")
        assert states[-2:] == [False, True]
    finally:
        await feed.aclose()
