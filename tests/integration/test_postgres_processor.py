"""The PostgreSQL processor through the cache core, on real Redis and PostgreSQL.

Entries derived from an experiment (metrics, analytics) are cached by the real
ClickHouse processor on an embedded ClickHouse (chDB); PostgreSQL outages are
a TCP proxy that cuts and refuses connections.

Every property is shown by counting store queries (``PostgresStore.queries``)
and cache outcomes, never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors, wiring
from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import (
    ClickHousePolicies,
    ClickHouseProcessor,
    experiment_lookup,
)
from mcprouter.server.clickhouse.store import open_clickhouse
from mcprouter.server.keys import KeySpace
from mcprouter.server.postgres.pool import create_pool
from mcprouter.server.postgres.processor import PostgresPolicies, PostgresProcessor
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event, EventMetrics, TrackEventsResult
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, UserProfile, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests import backends
from tests.consistency.proxy import PostgresProxy
from tests.faults.harness import frozen, valkey_pid
from tests.integration.pg_experiments import through_proxy

CACHED = ServeStatus.SERVE_STATUS_CACHED
FRESH = ServeStatus.SERVE_STATUS_FRESH
STALE = ServeStatus.SERVE_STATUS_STALE
STORED = ServeStatus.SERVE_STATUS_STORED
RUNNING = ExperimentStatus.EXPERIMENT_STATUS_RUNNING


class Clock:
    """Wall clock that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Rig:
    processor: PostgresProcessor
    store: PostgresStore
    cache: CacheAside
    stats: CacheStats
    clock: Clock


def policies() -> PostgresPolicies:
    def make(data_type: DataType.ValueType, fresh: float) -> CachePolicy:
        # xfetch off: these tests count loads exactly.
        return CachePolicy(data_type=data_type, fresh_ttl=fresh, xfetch_beta=0.0)

    return PostgresPolicies(
        experiment=make(DataType.DATA_TYPE_EXPERIMENT, 86_400),
        assignment=make(DataType.DATA_TYPE_ASSIGNMENT, 3_600),
        user_profile=make(DataType.DATA_TYPE_USER_PROFILE, 1_800),
    )


def build_rig(
    redis: aioredis.Redis, pool: asyncpg.Pool, namespace: str, breaker: CircuitBreaker
) -> Rig:
    stats, clock = CacheStats(), Clock()
    keyspace = KeySpace(namespace)
    # A generous timeout: these tests count queries and must not fail open
    # because a busy machine made one GET slow. Outage tests use dead servers,
    # which refuse at once.
    cache = CacheAside(redis, keyspace, stats, breaker, clock=clock, redis_timeout=2.0)
    store = PostgresStore(pool)
    processor = PostgresProcessor(store, cache, policies())
    return Rig(processor, store, cache, stats, clock)


@pytest.fixture
async def rig(
    redis_client: aioredis.Redis, pool: asyncpg.Pool, namespace: str
) -> AsyncIterator[Rig]:
    rig = build_rig(redis_client, pool, namespace, CircuitBreaker())
    yield rig
    await rig.processor.aclose()
    await rig.cache.aclose()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def experiment(exp_id: str, *, weights: tuple[int, ...] = (50, 50), **fields: object) -> Experiment:
    variants = [Variant(name=f"v{i}", weight=w) for i, w in enumerate(weights)]
    values: dict[str, object] = {"name": f"name of {exp_id}", "status": RUNNING, **fields}
    return Experiment(experiment_id=exp_id, variants=variants, **values)  # type: ignore[arg-type]


async def create(rig: Rig, exp: Experiment) -> Experiment:
    result = await rig.processor.upsert_experiment(rs.UpsertExperimentOperation(experiment=exp))
    assert result.status == STORED
    assert isinstance(result.value, Experiment)
    return result.value


async def get_experiment(rig: Rig, exp_id: str) -> tuple[int, Experiment]:
    result = await rig.processor.get_experiment(rs.GetExperimentOperation(experiment_id=exp_id))
    assert isinstance(result.value, Experiment)
    assert result.cache_key == f"experiment:{exp_id}"
    return result.status, result.value


async def test_miss_then_hit(rig: Rig) -> None:
    exp = await create(rig, experiment(uid("e")))
    before = rig.store.queries
    assert await get_experiment(rig, exp.experiment_id) == (FRESH, exp)
    assert await get_experiment(rig, exp.experiment_id) == (CACHED, exp)
    assert rig.store.queries - before == 1


async def test_concurrent_misses_make_one_query(rig: Rig) -> None:
    exp = await create(rig, experiment(uid("e")))
    before = rig.store.queries
    results = await asyncio.gather(*(get_experiment(rig, exp.experiment_id) for _ in range(64)))
    assert rig.store.queries - before == 1
    assert {value.SerializeToString() for _, value in results} == {exp.SerializeToString()}


async def test_missing_ids_are_negatively_cached(rig: Rig) -> None:
    missing = uid("nobody")
    before = rig.store.queries
    for _ in range(3):
        with pytest.raises(errors.NotFound):
            await rig.processor.get_user_profile(rs.GetUserProfileOperation(user_id=missing))
    assert rig.store.queries - before == 1
    snapshot = rig.stats.snapshot().per_type[DataType.DATA_TYPE_USER_PROFILE]
    assert snapshot[Outcome.NEGATIVE_HIT] == 2


@contextlib.asynccontextmanager
async def clickhouse_beside(
    rig: Rig, namespace: str, folder: Path
) -> AsyncIterator[ClickHouseProcessor]:
    """The ClickHouse processor on the rig's cache core, over a real chDB engine.

    It looks experiments up through the cache in PostgreSQL, as ``app.py`` wires it.
    """
    store = await open_clickhouse(f"chdb://{folder / 'clickhouse'}", migrate=True)
    batcher: EventBatcher[Event] = EventBatcher(store.insert_events, max_delay_ms=5)
    core = wiring.Core(rig.cache, rig.cache.guard, KeySpace(namespace), rig.stats)

    def make(data_type: DataType.ValueType, fresh: float) -> CachePolicy:
        return CachePolicy(data_type=data_type, fresh_ttl=fresh, xfetch_beta=0.0)

    processor = wiring.clickhouse_processor(
        core,
        store,
        batcher,
        policies=ClickHousePolicies(
            event_metrics=make(DataType.DATA_TYPE_EVENT_METRICS, 900),
            analytics=make(DataType.DATA_TYPE_ANALYTICS, 7200),
            closed_hour=make(DataType.DATA_TYPE_EVENT_METRICS, 7 * 86_400),
        ),
        experiments=experiment_lookup(rig.cache, rig.store.get_experiment, policies().experiment),
    )
    try:
        yield processor
    finally:
        await processor.aclose()
        await batcher.aclose()
        await store.close()


async def test_update_invalidates_and_next_read_is_fresh(
    rig: Rig, redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    exp = await create(rig, experiment(uid("e")))
    exp_id = exp.experiment_id
    await get_experiment(rig, exp_id)
    # Derived entries: yesterday's analytics and a closed hour's metrics, cached
    # by the ClickHouse processor from events stored in ClickHouse.
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    noon = day + timedelta(hours=12)
    async with clickhouse_beside(rig, namespace, tmp_path) as clickhouse:
        events = []
        for n, event_type in enumerate(["exposure", "click"]):
            e = Event(
                event_id=uuid.uuid4().hex,
                experiment_id=exp_id,
                user_id=f"u{n}",
                variant="v0",
                event_type=event_type,
                value=1.0,
            )
            e.timestamp.FromDatetime(noon)
            events.append(e)
        tracked = await clickhouse.track_events(rs.TrackEventsOperation(events=events))
        assert isinstance(tracked.value, TrackEventsResult)
        assert tracked.value.stored == 2
        metrics_op = rs.GetEventMetricsOperation(experiment_id=exp_id, variant="v0", metric="click")
        metrics_op.hour.FromDatetime(noon)
        analytics_op = rs.GetAnalyticsOperation(experiment_id=exp_id)
        analytics_op.day.FromDatetime(day)
        metrics = await clickhouse.get_event_metrics(metrics_op)
        analytics = await clickhouse.get_analytics(analytics_op)
        assert (metrics.status, analytics.status) == (FRESH, FRESH)
        assert isinstance(metrics.value, EventMetrics)
        assert metrics.value.count == 1
        await rig.cache.settle()
        space = KeySpace(namespace)
        derived = [space.redis_key(metrics.cache_key), space.redis_key(analytics.cache_key)]
        assert await redis_client.exists(*derived) == 2
        assert (await clickhouse.get_analytics(analytics_op)).status == CACHED
        changed = Experiment()
        changed.CopyFrom(exp)
        changed.name = "renamed"
        updated = await create(rig, changed)
        assert updated.version == exp.version + 1
        status, value = await get_experiment(rig, exp_id)
        assert (status, value.name, value.version) == (FRESH, "renamed", updated.version)
        assert await redis_client.exists(*derived) == 0
        assert (await clickhouse.get_analytics(analytics_op)).status == FRESH
        assert (await clickhouse.get_event_metrics(metrics_op)).status == FRESH


async def test_stale_version_is_aborted(rig: Rig) -> None:
    exp = await create(rig, experiment(uid("e")))
    await create(rig, exp)  # version 1 -> 2
    with pytest.raises(errors.Aborted):
        await create(rig, exp)  # still says version 1


async def test_profile_update_invalidates(rig: Rig) -> None:
    user = uid("u")
    op = rs.UpsertUserProfileOperation(
        profile=UserProfile(user_id=user, attributes={"plan": "free"})
    )
    stored = (await rig.processor.upsert_user_profile(op)).value
    assert isinstance(stored, UserProfile)
    read = rs.GetUserProfileOperation(user_id=user)
    assert (await rig.processor.get_user_profile(read)).status == FRESH
    assert (await rig.processor.get_user_profile(read)).status == CACHED
    op.profile.version = stored.version
    op.profile.attributes["plan"] = "pro"
    await rig.processor.upsert_user_profile(op)
    result = await rig.processor.get_user_profile(read)
    assert result.status == FRESH
    assert isinstance(result.value, UserProfile)
    assert result.value.attributes["plan"] == "pro"


async def test_assignment_is_sticky_across_a_weight_change(rig: Rig) -> None:
    exp = await create(rig, experiment(uid("e"), weights=(50, 50)))
    users = [uid("u") for _ in range(40)]
    first = {}
    for user in users:
        op = rs.GetAssignmentOperation(experiment_id=exp.experiment_id, user_id=user)
        first[user] = (await rig.processor.get_assignment(op)).value.variant  # type: ignore[attr-defined]
    # Shift nearly all traffic to v1: a fresh computation would move most v0 users.
    shifted = experiment(exp.experiment_id, weights=(1, 10_000), version=exp.version)
    await create(rig, shifted)
    await rig.cache.invalidate([f"assignment:{exp.experiment_id}:{u}" for u in users])
    for user in users:
        op = rs.GetAssignmentOperation(experiment_id=exp.experiment_id, user_id=user)
        result = await rig.processor.get_assignment(op)
        assert result.status == FRESH  # re-read from PostgreSQL, not the cache
        assert result.value.variant == first[user]  # type: ignore[attr-defined]
    assert "v0" in first.values()


async def test_only_running_experiments_assign_and_refusals_are_not_cached(rig: Rig) -> None:
    draft = await create(rig, experiment(uid("e"), status=ExperimentStatus.EXPERIMENT_STATUS_DRAFT))
    op = rs.GetAssignmentOperation(experiment_id=draft.experiment_id, user_id="u1")
    await get_experiment(rig, draft.experiment_id)  # cached: assignments check it first
    before = rig.store.queries
    for _ in range(2):
        with pytest.raises(errors.FailedPrecondition):
            await rig.processor.get_assignment(op)
    assert rig.store.queries - before == 2
    with pytest.raises(errors.NotFound):
        await rig.processor.get_assignment(
            rs.GetAssignmentOperation(experiment_id=uid("missing"), user_id="u1")
        )


async def test_stale_is_served_while_postgres_is_unreachable_and_reads_recover(
    redis_client: aioredis.Redis,
    migrated_dsn: str,
    namespace: str,
    postgres_proxy: PostgresProxy,
) -> None:
    # The pool reaches PostgreSQL through a proxy that the test makes cut every
    # connection and refuse new ones: PostgreSQL is gone as far as the pool can tell.
    pool = await create_pool(
        through_proxy(migrated_dsn, postgres_proxy.port), min_size=1, max_size=2
    )
    rig = build_rig(redis_client, pool, namespace, CircuitBreaker())
    try:
        exp = await create(rig, experiment(uid("e")))
        await get_experiment(rig, exp.experiment_id)
        never_read = await create(rig, experiment(uid("e")))
        await rig.cache.settle()
        postgres_proxy.unreachable()
        # Still fresh: served from the cache without noticing the store is down.
        assert (await get_experiment(rig, exp.experiment_id))[0] == CACHED
        rig.clock.offset = 2 * 86_400  # past freshness, inside the stale window
        assert await get_experiment(rig, exp.experiment_id) == (STALE, exp)
        # Nothing cached: UNAVAILABLE, naming the key; the store's own error names PostgreSQL.
        with pytest.raises(errors.Unavailable, match=never_read.experiment_id) as caught:
            await get_experiment(rig, never_read.experiment_id)
        cause = caught.value.__cause__
        assert isinstance(cause, errors.Unavailable)
        assert cause.metadata["store"] == "postgres"
        # A write fails as UNAVAILABLE from PostgreSQL; its outcome is unknown to
        # the service, so it still invalidates the cached copy.
        changed = experiment(exp.experiment_id, version=exp.version, name="during outage")
        with pytest.raises(errors.Unavailable) as write_failed:
            await create(rig, changed)
        assert write_failed.value.metadata["store"] == "postgres"
        space = KeySpace(namespace)
        assert not await redis_client.exists(space.redis_key(f"experiment:{exp.experiment_id}"))

        postgres_proxy.pass_through()  # the outage ends: reads load again
        assert await get_experiment(rig, exp.experiment_id) == (FRESH, exp)  # never written
        assert await get_experiment(rig, never_read.experiment_id) == (FRESH, never_read)
        assert (await get_experiment(rig, never_read.experiment_id))[0] == CACHED
    finally:
        postgres_proxy.pass_through()
        await rig.processor.aclose()
        await rig.cache.aclose()
        await pool.close()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[backends.RestartableValkey]:
    with backends.restartable_valkey(tmp_path) as server:
        yield server


@pytest.fixture
async def private_redis(valkey: backends.RestartableValkey) -> AsyncIterator[aioredis.Redis]:
    redis = create_redis(valkey.url, pool_size=8, timeout_s=0.2, pool_timeout_s=0.2)
    yield redis
    await redis.aclose()


async def test_reads_survive_redis_going_away_and_the_breaker_recovers(
    pool: asyncpg.Pool, valkey: backends.RestartableValkey, private_redis: aioredis.Redis
) -> None:
    breaker_now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=lambda: breaker_now[0])
    rig = build_rig(private_redis, pool, "", breaker)
    try:
        exp = await create(rig, experiment(uid("e")))
        assert (await get_experiment(rig, exp.experiment_id))[0] == FRESH
        await rig.cache.settle()
        valkey.stop()

        def errors_so_far() -> int:
            return rig.stats.snapshot().redis_errors

        for _ in range(6):
            status, value = await get_experiment(rig, exp.experiment_id)
            assert (status, value) == (FRESH, exp)  # fail open: PostgreSQL answers
        assert breaker.state == "open"
        errors_while_open = errors_so_far()
        for _ in range(5):
            await get_experiment(rig, exp.experiment_id)
        assert errors_so_far() == errors_while_open  # open breaker: Redis not even tried

        valkey.restart()
        breaker_now[0] += 10  # past reset_timeout: the next call probes
        assert (await get_experiment(rig, exp.experiment_id))[0] == FRESH
        assert breaker.state == "closed"
        assert (await get_experiment(rig, exp.experiment_id))[0] == CACHED
    finally:
        await rig.processor.aclose()
        await rig.cache.aclose()


async def test_write_survives_redis_down_and_invalidation_is_retried(
    pool: asyncpg.Pool, valkey: backends.RestartableValkey, private_redis: aioredis.Redis
) -> None:
    rig = build_rig(private_redis, pool, "", CircuitBreaker())
    try:
        exp = await create(rig, experiment(uid("e")))
        await get_experiment(rig, exp.experiment_id)
        await rig.cache.settle()
        key = f"experiment:{exp.experiment_id}"
        rkey = KeySpace("").redis_key(key)
        assert await private_redis.exists(rkey)  # the old value is cached
        changed = experiment(exp.experiment_id, version=exp.version, name="after outage")
        with frozen(valkey_pid(valkey.url)):  # Redis stops answering, keeping its data
            stored = await create(rig, changed)  # committed: STORED despite Redis
            assert stored.name == "after outage"
            assert rig.cache.awaiting_invalidation(key)
            # Read-your-writes while the invalidation waits: straight from PostgreSQL.
            assert (await get_experiment(rig, exp.experiment_id))[1].name == "after outage"
        # Redis is back with the old value in it: the retried invalidation removes it.
        for _ in range(200):
            if not rig.cache.awaiting_invalidation(key):
                break
            await asyncio.sleep(0.05)
        assert not rig.cache.awaiting_invalidation(key)
        assert not await private_redis.exists(rkey)
        assert (await get_experiment(rig, exp.experiment_id))[1].name == "after outage"
    finally:
        await rig.processor.aclose()
        await rig.cache.aclose()


async def test_an_assignment_of_a_missing_experiment_names_it_and_asks_the_cache_first(
    rig: Rig,
) -> None:
    """The missing experiment is checked through the cache (a cached "not
    found" spares PostgreSQL), and the error names it."""
    missing = uid("missing")
    op = rs.GetAssignmentOperation(experiment_id=missing, user_id="u1")
    for _ in range(2):
        with pytest.raises(errors.NotFound) as caught:
            await rig.processor.get_assignment(op)
        assert caught.value.reason == "EXPERIMENT_NOT_FOUND"
        assert caught.value.metadata == {"experiment_id": missing}
        assert str(caught.value) == f"experiment {missing!r} does not exist, so it assigns no one"
    per_type = rig.stats.snapshot().per_type[DataType.DATA_TYPE_EXPERIMENT]
    assert per_type[Outcome.NEGATIVE_HIT] == 1


async def test_results_carry_their_key_and_when_the_value_was_stored(rig: Rig) -> None:
    before = datetime.now(UTC)
    exp = experiment(uid("e"))
    stored = await rig.processor.upsert_experiment(rs.UpsertExperimentOperation(experiment=exp))
    assert stored.cache_key == f"experiment:{exp.experiment_id}"
    assert stored.stored_at is not None and stored.stored_at >= before

    read = await rig.processor.get_experiment(
        rs.GetExperimentOperation(experiment_id=exp.experiment_id)
    )
    assert read.stored_at is not None and read.stored_at >= before

    profile = UserProfile(user_id=uid("u"))
    saved = await rig.processor.upsert_user_profile(rs.UpsertUserProfileOperation(profile=profile))
    assert saved.cache_key == f"user:{profile.user_id}:profile"
    assert saved.stored_at is not None and saved.stored_at.tzinfo is not None


async def test_with_the_assignment_cache_off_an_assignment_is_one_store_call(
    redis_client: aioredis.Redis, pool: asyncpg.Pool, namespace: str
) -> None:
    """No experiment check first: the store's own refusal names the experiment."""
    rig = build_rig(redis_client, pool, namespace, CircuitBreaker())
    off = replace(policies(), assignment=replace(policies().assignment, enabled=False))
    rig.processor = PostgresProcessor(rig.store, rig.cache, off)
    try:
        missing = uid("missing")
        before = rig.store.queries
        with pytest.raises(errors.NotFound) as caught:
            await rig.processor.get_assignment(
                rs.GetAssignmentOperation(experiment_id=missing, user_id="u1")
            )
        assert caught.value.metadata == {"experiment_id": missing}
        assert rig.store.queries - before == 1

        exp = await create(rig, experiment(uid("e")))
        before = rig.store.queries
        op = rs.GetAssignmentOperation(experiment_id=exp.experiment_id, user_id="u1")
        assert (await rig.processor.get_assignment(op)).status == FRESH
        assert rig.store.queries - before == 1
    finally:
        await rig.processor.aclose()
        await rig.cache.aclose()
