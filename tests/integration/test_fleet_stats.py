"""Fleet Stats against a real Redis: publish, sum the live, leave out the silent, clean up."""

from __future__ import annotations

import redis.asyncio as aioredis

from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.fleet import FleetStats
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fleet_of(
    redis_client: aioredis.Redis, namespace: str, name: str, clock: Clock, interval_s: float = 5.0
) -> tuple[FleetStats, CacheStats]:
    stats = CacheStats()
    guard = GuardedRedis(redis_client, CircuitBreaker(), stats, timeout=1.0)
    fleet = FleetStats(
        guard, KeySpace(namespace), stats, interval_s=interval_s, instance=name, clock=clock
    )
    return fleet, stats


async def test_the_fleet_sums_the_live_processes_and_drops_the_silent(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    clock = Clock()
    a, a_stats = fleet_of(redis_client, namespace, "host/1/a", clock)
    b, b_stats = fleet_of(redis_client, namespace, "host/2/b", clock)
    c, c_stats = fleet_of(redis_client, namespace, "host/3/c", clock)
    for stats, hits in ((a_stats, 1), (b_stats, 10), (c_stats, 100)):
        stats.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.HIT, hits)
        stats.operation()
    await b.publish()
    await c.publish()
    clock.now += 4.0
    view = await a.fleet()
    assert view.instances[0] == "host/1/a"
    assert set(view.instances) == {"host/1/a", "host/2/b", "host/3/c"}
    assert view.snapshot.total_operations == 3
    assert view.snapshot.per_type[DataType.DATA_TYPE_EXPERIMENT][Outcome.HIT] == 111
    assert view.max_age_s == 4.0
    # b keeps publishing, c falls silent: after three intervals c is left out...
    clock.now += 12.0
    await b.publish()
    view = await a.fleet()
    assert set(view.instances) == {"host/1/a", "host/2/b"}
    assert view.snapshot.per_type[DataType.DATA_TYPE_EXPERIMENT][Outcome.HIT] == 11
    key = f"{namespace}_stats"
    assert await redis_client.hexists(key, "host/3/c")
    # ...and removed after ten.
    clock.now += 40.0
    await b.publish()
    await a.fleet()
    assert not await redis_client.hexists(key, "host/3/c")
    assert 0 < await redis_client.ttl(key) <= 60
    # A process that stops cleanly takes its entry with it.
    b.start()
    await b.aclose()
    assert not await redis_client.hexists(key, "host/2/b")


async def test_with_redis_down_the_fleet_is_this_process(namespace: str) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        fleet, stats = fleet_of(dead, namespace, "host/9/z", Clock())
        stats.operation()
        await fleet.publish()  # fails open
        view = await fleet.fleet()
        assert view.instances == ("host/9/z",)
        assert view.snapshot.total_operations == 1
    finally:
        await dead.aclose()
