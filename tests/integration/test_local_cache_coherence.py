"""Two instances with an L1 each, sharing one real Redis and one PostgreSQL table:
an invalidation on either one reaches the other's memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors
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


async def test_a_remote_invalidation_drops_only_what_it_names(
    pair: tuple[Instance, Instance],
) -> None:
    """The feed applies another instance's invalidation to exactly its keys and
    patterns: the rest of the L1 stays, and so does the feed (a failure to
    apply would turn the L1 off and empty it)."""
    a, b = pair
    other = "experiment:other"
    await a.store.put(other)
    await a.read()
    await a.cache.get_or_load(other, Experiment, a.store.loader(other), POLICY)
    assert a.local.get(KEY) is not None and a.local.get(other) is not None

    await b.cache.invalidate([KEY])
    await eventually(lambda: a.local.get(KEY) is None)
    assert a.local.get(other) is not None
    assert a.local.active

    await b.cache.invalidate(patterns=["experiment:oth*"])
    await eventually(lambda: a.local.get(other) is None)
    assert a.local.active


async def test_l1_hits_are_counted_and_answer_like_redis_hits(
    pair: tuple[Instance, Instance],
) -> None:
    a, _ = pair
    loaded = await a.cache.get_or_load(KEY, Experiment, a.store.loader(KEY), POLICY)
    served = await a.cache.get_or_load(KEY, Experiment, a.store.loader(KEY), POLICY)
    assert (served.status, served.key) == (ServeStatus.SERVE_STATUS_CACHED, KEY)
    assert served.stored_at == loaded.stored_at  # when the store was read, not now
    per_type = a.stats.snapshot().per_type[EXPERIMENT]
    assert (per_type[Outcome.HIT], per_type[Outcome.LOCAL_HIT]) == (1, 1)


async def test_an_l1_negative_hit_raises_not_found_of_the_key(
    pair: tuple[Instance, Instance],
) -> None:
    a, _ = pair
    missing = "experiment:missing"  # no such row: the store answers None
    absent = a.store.loader(missing)
    with pytest.raises(errors.NotFound):
        await a.cache.get_or_load(missing, Experiment, absent, POLICY)
    assert a.local.get(missing) is not None  # "not found", admitted to the L1

    with pytest.raises(errors.NotFound) as caught:
        await a.cache.get_or_load(missing, Experiment, absent, POLICY)
    assert caught.value.metadata == {"key": missing, "data_type": "DATA_TYPE_EXPERIMENT"}
    per_type = a.stats.snapshot().per_type[EXPERIMENT]
    assert per_type[Outcome.NEGATIVE_HIT] == 1
    assert per_type.get(Outcome.LOCAL_HIT, 0) == 0
