"""The cache core, the dedup records and the counters on a real Redis Cluster.

A local cluster of 3 primaries and 3 replicas (``tests/cluster.py``, the
``valkey-server`` binary the embedded default ships) stands in for a
production cluster: keys spread over the slots, one script's keys share a
slot through their hash tag, SCAN walks every primary, the invalidation feed
runs on sharded pub/sub, and a manual ``CLUSTER FAILOVER`` in the middle of a
load leaves no wrong answer behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.crc import key_slot

from mcprouter.server import errors, wiring
from mcprouter.server.cache import CachePolicy, LocalCache
from mcprouter.server.cache.topology import RedisClient, is_cluster
from mcprouter.server.clickhouse.dedup import DedupPolicy, DedupRecords
from mcprouter.server.clickhouse.realtime import RealtimeCounters
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.postgres.pool import create_pool
from mcprouter.server.postgres.processor import PostgresPolicies, PostgresProcessor
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests.cluster import LocalCluster, local_cluster
from tests.conditions import eventually, eventually_async

CACHED = ServeStatus.SERVE_STATUS_CACHED
FRESH = ServeStatus.SERVE_STATUS_FRESH
POLICY = CachePolicy(DataType.DATA_TYPE_EXPERIMENT, fresh_ttl=600, xfetch_beta=0.0)
METRICS = CachePolicy(DataType.DATA_TYPE_EVENT_METRICS, fresh_ttl=600, xfetch_beta=0.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[RedisClient]:
    redis = create_redis(
        cluster.url.replace("redis://", "redis+cluster://"),
        pool_size=16,
        timeout_s=2.0,
        pool_timeout_s=2.0,
    )
    assert is_cluster(redis)
    yield redis
    await redis.aclose()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def policies() -> PostgresPolicies:
    return PostgresPolicies(
        experiment=POLICY,
        assignment=CachePolicy(DataType.DATA_TYPE_ASSIGNMENT, fresh_ttl=600, xfetch_beta=0.0),
        user_profile=CachePolicy(DataType.DATA_TYPE_USER_PROFILE, fresh_ttl=600, xfetch_beta=0.0),
    )


async def value(exp: Experiment) -> Experiment:
    return exp


async def test_reads_invalidations_and_figures_span_the_primaries(
    client: RedisClient,
) -> None:
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=2.0)
    ops = RedisProcessor(core.cache, space)
    try:
        ids = [uid("e") for _ in range(40)]  # enough to land on every primary
        for exp_id in ids:
            exp = Experiment(experiment_id=exp_id, version=1)
            first = await core.cache.get_or_load(
                f"experiment:{exp_id}", Experiment, lambda e=exp: value(e), POLICY
            )
            assert first.status == FRESH
        await core.cache.settle()
        again = await core.cache.get_or_load(
            f"experiment:{ids[0]}", Experiment, lambda: value(Experiment()), POLICY
        )
        assert (again.status, again.value.experiment_id) == (CACHED, ids[0])
        entries = await ops.get_cached([f"experiment:{i}" for i in ids])
        assert all(entry.value is not None for entry in entries)
        figures = await ops.figures()
        assert figures.key_count >= len(ids)
        # A pattern walks every primary; the exact key and the others go too.
        removed = await ops.invalidate_pattern("experiment:e-*")
        assert removed == len(ids)
        entries = await ops.get_cached([f"experiment:{i}" for i in ids])
        assert all(entry.value is None for entry in entries)
    finally:
        await core.cache.aclose()


async def test_an_experiment_write_removes_its_derived_entries_through_the_index(
    client: RedisClient, migrated_dsn: str
) -> None:
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=2.0)
    pool = await create_pool(migrated_dsn, min_size=1, max_size=4)
    processor = PostgresProcessor(PostgresStore(pool), core.cache, policies())
    try:
        exp_id = uid("e")
        created = await processor.upsert_experiment(
            rs.UpsertExperimentOperation(experiment=experiment(exp_id))
        )
        derived = [f"metrics:{exp_id}:control:clicks:202611291{h}" for h in range(5)]
        for key in derived:
            await core.cache.get_or_load(key, Experiment, lambda: value(Experiment()), METRICS)
        await core.cache.settle()
        assert await client.scard(space.index("metrics", exp_id)) == len(derived)
        changed = experiment(exp_id, version=created.value.version)  # type: ignore[attr-defined]
        await processor.upsert_experiment(rs.UpsertExperimentOperation(experiment=changed))
        assert await client.exists(*(space.redis_key(k) for k in derived)) == 0
        assert await client.exists(space.index("metrics", exp_id)) == 0
    finally:
        await processor.aclose()
        await core.cache.aclose()
        await pool.close()


def experiment(exp_id: str, *, version: int = 0, name: str = "n") -> Experiment:
    return Experiment(
        experiment_id=exp_id,
        name=name,
        version=version,
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
    )


async def test_the_invalidation_feed_runs_on_sharded_pub_sub(client: RedisClient) -> None:
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")

    def instance() -> wiring.Core:
        local = LocalCache(max_entries=100, max_age=60, clock=time.time)
        core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=2.0, local=local)
        core.cache.start()
        return core

    a, b = instance(), instance()
    try:
        await eventually(lambda: a.cache.feed_connected and b.cache.feed_connected, "feeds up")
        key = f"experiment:{uid('e')}"
        await a.cache.get_or_load(key, Experiment, lambda: value(Experiment(version=1)), POLICY)
        served = await a.cache.get_or_load(key, Experiment, lambda: value(Experiment()), POLICY)
        assert served.status == CACHED  # from a's L1
        await b.cache.invalidate([key])
        reread = await a.cache.get_or_load(
            key, Experiment, lambda: value(Experiment(version=2)), POLICY
        )
        await eventually_async(
            lambda: _version_is(a, key, 2), "the invalidation reached the other L1"
        )
        assert reread.value.version in (1, 2)
    finally:
        await a.cache.aclose()
        await b.cache.aclose()


async def _version_is(core: wiring.Core, key: str, version: int) -> bool:
    served = await core.cache.get_or_load(
        key, Experiment, lambda: value(Experiment(version=version)), POLICY
    )
    return served.value.version == version


@dataclass
class Dedup:
    """Dedup records on the cluster, in a key namespace of one test."""

    records: DedupRecords
    space: KeySpace
    client: RedisClient


@pytest.fixture
async def dedup(client: RedisClient) -> AsyncIterator[Dedup]:
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=2.0)
    followups = FollowUps()
    try:
        yield Dedup(DedupRecords(core.state, space, followups, DedupPolicy()), space, client)
    finally:
        await followups.aclose()
        await core.cache.aclose()


async def test_dedup_claims_across_slots_are_all_or_nothing(dedup: Dedup) -> None:
    records, space = dedup.records, dedup.space
    client = dedup.client
    ids = [uid("ev") for _ in range(30)]  # many slots
    first = await records.claim(ids[:20])
    assert all(first.is_new)
    # ids[0] is pending now: a request holding it and ten fresh ids claims nothing.
    with pytest.raises(errors.Unavailable) as caught:
        await records.claim([*ids[20:], ids[0]])
    assert caught.value.reason == "EVENTS_IN_FLIGHT"
    fresh = [space.internal("dedup", i) for i in ids[20:]]
    assert await client.exists(*fresh) == 0
    await records.mark_done([first])
    again = await records.claim(ids)
    assert again.is_new == [False] * 20 + [True] * 10  # done: DUPLICATE; the rest new


async def test_dedup_two_slots_one_in_flight_claims_nothing(dedup: Dedup) -> None:
    """The smallest cross-slot request: two ids in two slots, one pending."""
    records, space = dedup.records, dedup.space
    client = dedup.client
    busy = uid("ev")
    slot = key_slot(space.internal("dedup", busy).encode())
    fresh = next(
        i
        for i in (uid("ev") for _ in range(100))
        if key_slot(space.internal("dedup", i).encode()) != slot
    )
    await records.claim([busy])
    with pytest.raises(errors.Unavailable):
        await records.claim([fresh, busy])
    assert await client.exists(space.internal("dedup", fresh)) == 0


async def test_dedup_settle_stored_across_slots(dedup: Dedup) -> None:
    records = dedup.records
    ids = [uid("ev") for _ in range(30)]  # many slots
    await records.claim(ids[:10])  # pending: made done too
    assert await records.settle_stored(ids) == 30
    assert (await records.claim(ids)).is_new == [False] * 30


async def test_dedup_release_across_slots(dedup: Dedup) -> None:
    records, client = dedup.records, dedup.client
    ids = [uid("ev") for _ in range(30)]  # many slots
    claim = await records.claim(ids)
    await records.release(claim)
    assert await client.exists(*claim.keys) == 0


async def test_counters_of_many_experiments_land_in_their_slots(client: RedisClient) -> None:
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=2.0)
    counters = RealtimeCounters(core.state, space)
    try:
        hour = time.time() // 3600 * 3600
        events = []
        for n, exp_id in enumerate(uid("e") for _ in range(12)):
            for user in range(n + 1):
                event = Event(
                    event_id=uid("ev"),
                    experiment_id=exp_id,
                    user_id=f"u{user}",
                    variant="control",
                    event_type="click",
                    value=1.0,
                )
                event.timestamp.FromSeconds(int(hour) + 60)
                events.append(event)
        assert await counters.record(events)
        from datetime import UTC, datetime

        at = datetime.fromtimestamp(hour, UTC)
        for n, exp_id in enumerate(dict.fromkeys(e.experiment_id for e in events)):
            figures = await counters.read(exp_id, "control", "click", at)
            assert figures is not None
            assert (figures.count, figures.unique_users) == (n + 1, n + 1)
    finally:
        await core.cache.aclose()


async def test_a_failover_under_load_leaves_no_wrong_answer(
    cluster: LocalCluster, client: RedisClient, migrated_dsn: str, tmp_path: Path
) -> None:
    """Reads keep being served (fail open) and never cross keys; the writer reads
    its own writes throughout; writes and their invalidations land; afterwards
    every cached value equals PostgreSQL on every instance."""
    space = KeySpace(f"cl-{uuid.uuid4().hex[:6]}:")
    pool = await create_pool(migrated_dsn, min_size=1, max_size=8)
    reader_core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=0.5)
    writer_core = wiring.cache_core(client, space, CacheStats(), redis_timeout_s=0.5)
    reader = PostgresProcessor(PostgresStore(pool), reader_core.cache, policies())
    writer = PostgresProcessor(PostgresStore(pool), writer_core.cache, policies())
    ids = [uid("e") for _ in range(12)]
    acknowledged: dict[str, int] = {}
    try:
        for exp_id in ids:
            stored = await writer.upsert_experiment(
                rs.UpsertExperimentOperation(experiment=experiment(exp_id))
            )
            acknowledged[exp_id] = stored.value.version  # type: ignore[attr-defined]
        stop = asyncio.Event()
        wrong: list[str] = []
        reads = 0

        async def read_loop() -> None:
            nonlocal reads
            while not stop.is_set():
                for exp_id in ids:
                    floor = acknowledged[exp_id]
                    op = rs.GetExperimentOperation(experiment_id=exp_id)
                    own = (await writer.get_experiment(op)).value
                    other = (await reader.get_experiment(op)).value
                    reads += 2
                    assert isinstance(own, Experiment) and isinstance(other, Experiment)
                    if own.version < floor:
                        wrong.append(f"{exp_id}: the writer read {own.version} after {floor}")
                    if other.experiment_id != exp_id:
                        wrong.append(f"{exp_id}: crossed reply {other.experiment_id}")
                await asyncio.sleep(0)

        async def write_loop() -> None:
            while not stop.is_set():
                for exp_id in ids:
                    op = rs.UpsertExperimentOperation(
                        experiment=experiment(exp_id, version=acknowledged[exp_id], name=uid("n"))
                    )
                    stored = await writer.upsert_experiment(op)
                    acknowledged[exp_id] = stored.value.version  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)

        loops = [asyncio.create_task(read_loop()), asyncio.create_task(write_loop())]
        for replica in cluster.replica_ports():
            await asyncio.to_thread(cluster.fail_over, replica)
        stop.set()
        await asyncio.gather(*loops)
        assert wrong == []
        assert reads > 0

        async def converged() -> bool:
            for exp_id in ids:
                got = await reader.get_experiment(rs.GetExperimentOperation(experiment_id=exp_id))
                if got.value.version != acknowledged[exp_id]:  # type: ignore[attr-defined]
                    return False
            return True

        await eventually_async(converged, "every cached experiment equals PostgreSQL")
    finally:
        await reader.aclose()
        await writer.aclose()
        await reader_core.cache.aclose()
        await writer_core.cache.aclose()
        await pool.close()
