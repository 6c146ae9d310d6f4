"""Two instances with an L1 each, sharing one real Redis and one PostgreSQL table:
an invalidation on either one reaches the other's memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker, LocalCache
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.experiment_pb2 import Experiment
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests.conditions import eventually
from tests.integration.pg_experiments import ExperimentDb, Loads

EXPERIMENT = DataType.DATA_TYPE_EXPERIMENT
POLICY = CachePolicy(EXPERIMENT, fresh_ttl=600, xfetch_beta=0.0)
KEY = "experiment:hot"


class Instance:
    def __init__(self, redis: aioredis.Redis, namespace: str, db: ExperimentDb) -> None:
        self.stats = CacheStats()
        self.local = LocalCache(
            max_entries=100, max_age=60, clock=lambda: asyncio.get_running_loop().time() + 1e9
        )
        self.cache = CacheAside(
            redis,
            KeySpace(namespace),
            self.stats,
            CircuitBreaker(),
            redis_timeout=2.0,
            local=self.local,
        )
        # The production loader (PostgresStore.get_experiment), counted.
        self.store = Loads(db)

    async def read(self) -> tuple[int, int]:
        served = await self.cache.get_or_load(KEY, Experiment, self.store.loader(KEY), POLICY)
        return served.status, served.value.version

    def local_hits(self) -> int:
        return self.stats.snapshot().per_type.get(EXPERIMENT, {}).get(Outcome.LOCAL_HIT, 0)


@pytest.fixture
async def pair(
    redis_client: aioredis.Redis, namespace: str, experiment_db: ExperimentDb
) -> AsyncIterator[tuple[Instance, Instance]]:
    await experiment_db.put("hot", version=1)
    a = Instance(redis_client, namespace, experiment_db)
    b = Instance(redis_client, namespace, experiment_db)
    a.cache.start()
    b.cache.start()
    await eventually(lambda: a.local.active and b.local.active)
    yield a, b
    await a.cache.aclose()
    await b.cache.aclose()


async def test_hot_reads_skip_redis_until_another_instance_invalidates(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    assert await a.read() == (ServeStatus.SERVE_STATUS_FRESH, 1)  # loaded: into the L1 at once
    assert await a.read() == (ServeStatus.SERVE_STATUS_CACHED, 1)
    assert await a.read() == (ServeStatus.SERVE_STATUS_CACHED, 1)
    assert a.local_hits() == 2

    await b.store.put(KEY, version=2)  # the write commits ...
    await b.cache.invalidate([KEY])  # ... and B invalidates
    await eventually(lambda: a.local.get(KEY) is None)
    assert await a.read() == (ServeStatus.SERVE_STATUS_FRESH, 2)
    assert a.store.calls == 2


async def test_pattern_invalidations_reach_other_instances(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    await a.read()
    await a.read()
    assert a.local.get(KEY) is not None
    await b.cache.invalidate(patterns=["experiment:h*"])
    await eventually(lambda: a.local.get(KEY) is None)


async def test_no_local_hits_without_the_feed(
    redis_client: aioredis.Redis, namespace: str, experiment_db: ExperimentDb
) -> None:
    await experiment_db.put("hot", version=1)
    lone = Instance(redis_client, namespace, experiment_db)  # never started: feed not connected
    try:
        for _ in range(3):
            await lone.read()
        assert lone.local_hits() == 0
    finally:
        await lone.cache.aclose()
