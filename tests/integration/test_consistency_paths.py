"""Regression tests of the consistency issue's paths, on real Redis and PostgreSQL.

Each test names the path it closes. Two "instances" are two cache cores (each
with its own L1 and invalidation feed) over one Redis and one PostgreSQL,
exactly as two server processes share them. Faults are injected around real
components (a caller cancelled right after the store committed, a deadline
that runs out, a load held at a gate), never by a fake store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis

from mcprouter.server import budget, errors
from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker, LocalCache
from mcprouter.server.keys import KeySpace
from mcprouter.server.postgres.pool import create_pool
from mcprouter.server.postgres.processor import PostgresPolicies, PostgresProcessor
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.stats import CacheStats
from mcprouter.server.writes import Writes
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests.conditions import eventually, eventually_async
from tests.integration.pg_experiments import ExperimentDb

STORED = ServeStatus.SERVE_STATUS_STORED
RUNNING = ExperimentStatus.EXPERIMENT_STATUS_RUNNING


def policies(**changes: object) -> PostgresPolicies:
    def make(data_type: DataType.ValueType, fresh: float) -> CachePolicy:
        settings: dict[str, object] = {"fresh_ttl": fresh, "xfetch_beta": 0.0}
        settings.update(changes)
        return CachePolicy(data_type=data_type, **settings)  # type: ignore[arg-type]

    return PostgresPolicies(
        experiment=make(DataType.DATA_TYPE_EXPERIMENT, 86_400),
        assignment=make(DataType.DATA_TYPE_ASSIGNMENT, 3_600),
        user_profile=make(DataType.DATA_TYPE_USER_PROFILE, 1_800),
    )


@dataclass
class Instance:
    """One server's worth of cache core, L1 and PostgreSQL processor."""

    processor: PostgresProcessor
    store: PostgresStore
    cache: CacheAside
    local: LocalCache
    ops: RedisProcessor

    async def read(self, exp_id: str) -> Experiment:
        result = await self.processor.get_experiment(
            rs.GetExperimentOperation(experiment_id=exp_id)
        )
        assert isinstance(result.value, Experiment)
        return result.value

    async def write(self, exp: Experiment) -> Experiment:
        result = await self.processor.upsert_experiment(
            rs.UpsertExperimentOperation(experiment=exp)
        )
        assert result.status == STORED
        assert isinstance(result.value, Experiment)
        return result.value

    async def aclose(self) -> None:
        await self.processor.aclose()
        await self.cache.aclose()


Factory = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def instances(
    redis_client: aioredis.Redis, pool: asyncpg.Pool, namespace: str
) -> AsyncIterator[Factory]:
    made: list[Instance] = []

    async def make(*, l1: bool = False, **policy_changes: object) -> Instance:
        stats, keyspace = CacheStats(), KeySpace(namespace)
        local = LocalCache(max_entries=1000 if l1 else 0, max_age=60, clock=time.time)
        cache = CacheAside(
            redis_client, keyspace, stats, CircuitBreaker(), redis_timeout=2.0, local=local
        )
        cache.start()
        ops = RedisProcessor(cache, keyspace)
        store = PostgresStore(pool)
        processor = PostgresProcessor(store, cache, policies(**policy_changes))
        instance = Instance(processor, store, cache, local, ops)
        made.append(instance)
        if l1:
            await eventually(lambda: local.active)
        return instance

    yield make
    for instance in made:
        await instance.aclose()


DERIVED = CachePolicy(data_type=DataType.DATA_TYPE_EVENT_METRICS, fresh_ttl=600, xfetch_beta=0.0)


async def _same(value: Experiment) -> Experiment:
    return value


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def experiment(exp_id: str, *, version: int = 0, name: str = "first") -> Experiment:
    return Experiment(
        experiment_id=exp_id,
        name=name,
        status=RUNNING,
        version=version,
        variants=[Variant(name="control", weight=50), Variant(name="treatment", weight=50)],
    )


async def cached_version(redis: aioredis.Redis, namespace: str, exp_id: str) -> int | None:
    """The version of the experiment cached in Redis, ``None`` when not cached."""
    from mcprouter.server.cache import decode

    raw = await redis.get(KeySpace(namespace).redis_key(f"experiment:{exp_id}"))
    entry = decode(raw, DataType.DATA_TYPE_EXPERIMENT)
    if entry is None or entry.not_found:
        return None
    return Experiment.FromString(entry.payload).version


# --- 1. a write whose caller is cancelled or times out after the commit ----------


@pytest.mark.parametrize("ticks", [0, 1, 3])
async def test_path1_write_cancelled_after_commit_is_still_invalidated(
    instances: Factory, redis_client: aioredis.Redis, namespace: str, ticks: int
) -> None:
    """The RPC is cancelled (client gone, deadline) once PostgreSQL committed:
    the cancellation lands ``ticks`` event-loop turns into the invalidation."""
    a = await instances()
    exp = await a.write(experiment(uid("e")))
    await a.read(exp.experiment_id)
    derived_key = f"metrics:{exp.experiment_id}:control:clicks:2026010100"
    await a.cache.get_or_load(derived_key, Experiment, lambda: _same(exp), DERIVED)
    await a.cache.settle()
    derived = KeySpace(namespace).redis_key(derived_key)
    assert await redis_client.exists(derived)
    assert await cached_version(redis_client, namespace, exp.experiment_id) == 1
    commit = a.store.upsert_experiment
    loop = asyncio.get_running_loop()

    async def commit_then_cancel(value: Experiment) -> Experiment:
        stored = await commit(value)
        task = asyncio.current_task()
        assert task is not None

        def cancel(left: int) -> None:
            if left:
                loop.call_soon(cancel, left - 1)
            else:
                task.cancel()

        loop.call_soon(cancel, ticks)
        return stored

    a.store.upsert_experiment = commit_then_cancel  # type: ignore[method-assign]
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.create_task(a.write(experiment(exp.experiment_id, version=1, name="v2")))

    async def old_value_gone() -> bool:
        cached = await cached_version(redis_client, namespace, exp.experiment_id)
        return cached != 1 and not await redis_client.exists(derived)

    await eventually_async(old_value_gone, "invalidation after the cancelled write")
    assert (await a.read(exp.experiment_id)).name == "v2"


async def test_path1_a_write_that_commits_after_its_caller_gave_up_is_invalidated_once_it_did(
    experiment_db: ExperimentDb,
    postgres_dsn: str,
    redis_client: aioredis.Redis,
    namespace: str,
) -> None:
    """The UPDATE waits on a row lock past the caller's deadline and its cancel
    request is lost (PostgreSQL cannot be reached on a new connection), so
    PostgreSQL commits it *after* the writer's first invalidation, and a read
    meanwhile cached the old row. The writer invalidates again once the server
    process that ran the write is idle or gone, not after a fixed delay (set
    to an hour here)."""
    cache = CacheAside(redis_client, KeySpace(namespace), CacheStats(), CircuitBreaker())
    cache.start()
    store = PostgresStore(experiment_db.pool)
    processor = PostgresProcessor(store, cache, policies(), writes=Writes(recheck_s=3600))
    a = Instance(
        processor,
        store,
        cache,
        LocalCache(max_entries=0, max_age=60, clock=time.time),
        RedisProcessor(cache, KeySpace(namespace)),
    )
    observer = await asyncpg.connect(postgres_dsn)
    lock = experiment_db.admin.transaction()
    try:
        exp = await a.write(experiment(uid("e")))
        exp_id = exp.experiment_id
        assert (await a.read(exp_id)).version == 1
        await lock.start()
        await experiment_db.admin.execute(
            "SELECT 1 FROM experiments WHERE experiment_id = $1 FOR UPDATE", exp_id
        )

        async def write_with_deadline() -> None:
            budget.set_timeout(1.0)
            await a.write(experiment(exp_id, version=1, name="v2"))

        write = asyncio.create_task(write_with_deadline())

        async def update_waits_on_the_lock() -> bool:
            waiting = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%UPDATE experiments%' AND pid <> pg_backend_pid()"
            )
            return bool(waiting)

        await eventually_async(update_waits_on_the_lock, "the UPDATE blocked on the row lock")
        experiment_db.proxy.refuse_new()
        with pytest.raises((TimeoutError, errors.Unavailable)):
            await write
        experiment_db.proxy.pass_through()

        assert (await a.read(exp_id)).version == 1  # loaded and cached while it waits
        assert await cached_version(redis_client, namespace, exp_id) == 1
        await lock.commit()  # the UPDATE goes on and commits: version 2

        async def committed() -> bool:
            return bool(
                await experiment_db.admin.fetchval(
                    "SELECT version FROM experiments WHERE experiment_id = $1", exp_id
                )
                == 2
            )

        await eventually_async(committed, "the abandoned UPDATE committed")

        async def old_value_gone() -> bool:
            return await cached_version(redis_client, namespace, exp_id) != 1

        await eventually_async(old_value_gone, "invalidation once the write settled")
        assert (await a.read(exp_id)).name == "v2"
    finally:
        if experiment_db.admin.is_in_transaction():
            await lock.rollback()
        await observer.close()
        await a.aclose()


# --- 2. no load stores its value without a lease that survived every invalidation --


class Gate:
    """Holds a store read after it read the row, until opened."""

    def __init__(self, store: PostgresStore) -> None:
        self.read_done = asyncio.Event()
        self.opened = asyncio.Event()
        real = store.get_experiment

        async def gated(exp_id: str) -> Experiment | None:
            value = await real(exp_id)
            self.read_done.set()
            await self.opened.wait()
            return value

        store.get_experiment = gated  # type: ignore[method-assign]


async def test_path2_a_caller_that_lost_the_lease_does_not_store_a_pre_write_value(
    instances: Factory, redis_client: aioredis.Redis, namespace: str
) -> None:
    a = await instances(lease_wait_ms=50)
    b = await instances(lease_wait_ms=50)
    writer = await instances()
    exp = await writer.write(experiment(uid("e")))
    holder_gate, waiter_gate = Gate(a.store), Gate(b.store)
    holder = asyncio.create_task(a.read(exp.experiment_id))  # takes the lease
    await holder_gate.read_done.wait()
    waiter = asyncio.create_task(b.read(exp.experiment_id))  # lost it; waits, then loads
    await waiter_gate.read_done.wait()  # b read version 1
    await writer.write(experiment(exp.experiment_id, version=1, name="v2"))
    waiter_gate.opened.set()
    holder_gate.opened.set()
    await asyncio.gather(holder, waiter)
    await asyncio.gather(a.cache.settle(), b.cache.settle())
    assert await cached_version(redis_client, namespace, exp.experiment_id) in (None, 2)
    assert (await writer.read(exp.experiment_id)).version == 2


@pytest.mark.parametrize("how", ["pattern"])
async def test_path2_pattern_and_entity_invalidations_break_the_leases_they_match(
    instances: Factory, redis_client: aioredis.Redis, namespace: str, how: str
) -> None:
    a, b = await instances(), await instances()
    exp = await a.write(experiment(uid("e")))
    gate = Gate(a.store)
    reader = asyncio.create_task(a.read(exp.experiment_id))  # leased load of version 1
    await gate.read_done.wait()
    # Another instance's write commits version 2 straight to PostgreSQL; that
    # instance then invalidates by pattern or entity (as an operator does).
    await b.store.upsert_experiment(experiment(exp.experiment_id, version=1, name="v2"))
    if how == "pattern":
        await b.ops.invalidate_pattern(f"experiment:{exp.experiment_id[:6]}*")
    else:
        await b.ops.invalidate_experiment(exp.experiment_id)
    gate.opened.set()
    await reader
    await a.cache.settle()  # its store-back, if any, has run
    assert await cached_version(redis_client, namespace, exp.experiment_id) in (None, 2)


# --- 3. a load slower than the lease's TTL is still cached -------------------------


async def test_path3_a_load_slower_than_the_lease_ttl_is_cached(
    instances: Factory, redis_client: aioredis.Redis, namespace: str
) -> None:
    a = await instances(lease_ttl_ms=150)
    exp = await a.write(experiment(uid("e")))
    gate = Gate(a.store)
    reader = asyncio.create_task(a.read(exp.experiment_id))
    await gate.read_done.wait()
    await asyncio.sleep(0.6)  # four lease TTLs: a lease that is not kept alive is gone
    gate.opened.set()
    await reader
    await a.cache.settle()
    assert await cached_version(redis_client, namespace, exp.experiment_id) == 1


# --- 4. read-your-writes on the instance that acknowledged the write ---------------


async def test_path4_the_writer_never_serves_its_pre_write_l1_entry(instances: Factory) -> None:
    a = await instances(l1=True)
    exp = await a.write(experiment(uid("e")))
    version = exp.version
    for _ in range(8):
        await a.read(exp.experiment_id)
        await a.read(exp.experiment_id)  # in the L1 now
        stop = asyncio.Event()

        async def hammer(stop: asyncio.Event = stop) -> None:
            while not stop.is_set():
                await a.read(exp.experiment_id)
                await asyncio.sleep(0)  # an L1 hit never yields by itself

        readers = [asyncio.create_task(hammer()) for _ in range(8)]
        await asyncio.sleep(0)
        stored = await a.write(experiment(exp.experiment_id, version=version, name=uid("n")))
        seen = await a.read(exp.experiment_id)  # acknowledged: must see it
        stop.set()
        await asyncio.gather(*readers)
        assert seen.version == stored.version
        version = stored.version


# --- 7. a store that is down answers UNAVAILABLE, for writes too -------------------


async def test_path7_postgres_write_failures_are_unavailable(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    # A pool to a port nothing listens on: every statement fails to connect.
    pool = await create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=2)
    cache = CacheAside(redis_client, KeySpace(namespace), CacheStats(), CircuitBreaker())
    processor = PostgresProcessor(PostgresStore(pool), cache, policies())
    try:
        with pytest.raises(errors.Unavailable):
            await processor.upsert_experiment(
                rs.UpsertExperimentOperation(experiment=experiment(uid("e")))
            )
        with pytest.raises(errors.Unavailable):
            await processor.get_experiment(rs.GetExperimentOperation(experiment_id=uid("e")))
    finally:
        await processor.aclose()
        await cache.aclose()
        await pool.close()


# --- 9. "not found" cached before an experiment exists does not outlive its creation


async def test_path9_assignment_not_found_does_not_survive_the_experiments_creation(
    instances: Factory,
) -> None:
    a = await instances()
    exp_id = uid("e")
    op = rs.GetAssignmentOperation(experiment_id=exp_id, user_id="u1")
    with pytest.raises(errors.NotFound):
        await a.processor.get_assignment(op)
    await a.write(experiment(exp_id))
    result = await a.processor.get_assignment(op)
    assert result.value.variant in ("control", "treatment")  # type: ignore[attr-defined]


# --- the invalidation follows the commit, and a write detaches loads in flight -----


async def test_the_invalidation_follows_the_commit_not_precedes_it(
    instances: Factory, redis_client: aioredis.Redis, namespace: str
) -> None:
    """A reader that loads between an early invalidation and the commit would cache
    the old value for a whole TTL: the classic cache-aside race."""
    a, reader = await instances(), await instances()
    exp = await a.write(experiment(uid("e")))
    commit = a.store.upsert_experiment

    async def read_then_commit(value: Experiment) -> Experiment:
        # Another instance reads just before PostgreSQL commits.
        assert (await reader.read(exp.experiment_id)).version == 1
        await reader.cache.settle()
        return await commit(value)

    a.store.upsert_experiment = read_then_commit  # type: ignore[method-assign]
    await a.write(experiment(exp.experiment_id, version=1, name="v2"))
    await a.cache.settle()
    assert await cached_version(redis_client, namespace, exp.experiment_id) in (None, 2)
    assert (await reader.read(exp.experiment_id)).version == 2


async def test_a_write_detaches_the_load_in_flight_on_its_own_instance(
    instances: Factory,
) -> None:
    """A read that arrives after an acknowledged write must not join a load that
    read the store before it (single-flight detach)."""
    a = await instances()
    exp = await a.write(experiment(uid("e")))
    gate = Gate(a.store)
    early = asyncio.create_task(a.read(exp.experiment_id))  # loads version 1, held
    await gate.read_done.wait()
    gate.read_done.clear()
    await a.write(experiment(exp.experiment_id, version=1, name="v2"))
    late = asyncio.create_task(a.read(exp.experiment_id))  # after the acknowledgement
    await asyncio.sleep(0)
    gate.opened.set()
    assert (await early).version == 1  # it began before the write: either answer is fine
    assert (await late).version == 2


async def test_path1_write_cancelled_while_its_commit_returns_is_still_invalidated(
    instances: Factory, redis_client: aioredis.Redis, namespace: str
) -> None:
    """The cancellation lands while the store call that committed has not returned yet."""
    a = await instances()
    exp = await a.write(experiment(uid("e")))
    await a.read(exp.experiment_id)
    await a.cache.settle()
    commit = a.store.upsert_experiment
    committed = asyncio.Event()

    async def commit_slowly(value: Experiment) -> Experiment:
        stored = await commit(value)
        committed.set()
        await asyncio.sleep(0.2)  # the driver still reading the reply
        return stored

    a.store.upsert_experiment = commit_slowly  # type: ignore[method-assign]
    writer = asyncio.create_task(a.write(experiment(exp.experiment_id, version=1, name="v2")))
    await committed.wait()
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer

    async def old_value_gone() -> bool:
        return await cached_version(redis_client, namespace, exp.experiment_id) != 1

    await eventually_async(old_value_gone, "invalidation after the cancelled write")
    assert (await a.read(exp.experiment_id)).name == "v2"
