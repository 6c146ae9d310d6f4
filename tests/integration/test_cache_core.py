"""The cache-aside core against a real Redis and its production loader on PostgreSQL.

The loader is ``PostgresStore.get_experiment`` on a schema of the test's own
(``pg_experiments``): a miss is a missing row, a store failure is PostgreSQL
made unreachable by a TCP proxy, translated by the store into ``Unavailable``.
Properties are proven by counting loader calls and reading Redis, never by
timing: freshness runs on an injected clock, and the only sleeps are the lease
polls of the core itself (tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mcprouter.server.cache import (
    CacheAside,
    CachePolicy,
    CircuitBreaker,
    decode,
    encode,
)
from mcprouter.server.errors import CacheUnavailable, FailedPrecondition, NotFound, Unavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope
from mcprouter.v1.experiment_pb2 import Assignment, Experiment
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests.backends import restartable_valkey
from tests.conditions import eventually
from tests.fakes import FakeClock, FixedRandom
from tests.faults.harness import frozen, valkey_pid
from tests.integration.pg_experiments import ExperimentDb, Loads

EXPERIMENT = DataType.DATA_TYPE_EXPERIMENT
ASSIGNMENT = DataType.DATA_TYPE_ASSIGNMENT
CACHED = ServeStatus.SERVE_STATUS_CACHED
FRESH = ServeStatus.SERVE_STATUS_FRESH
STALE = ServeStatus.SERVE_STATUS_STALE
KEY = "experiment:exp-1"


class CountingRedis(aioredis.Redis):
    """A real client that counts the commands it sends (pipelines aside)."""

    calls = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.calls += 1
        return await super().execute_command(*args, **options)


def policy(**changes: Any) -> CachePolicy:
    settings: dict[str, Any] = {"fresh_ttl": 60.0, "stale_ttl": 3600.0, "jitter": 0.1}
    settings.update(changes)
    return CachePolicy(EXPERIMENT, **settings)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stats() -> CacheStats:
    return CacheStats()


@pytest.fixture
async def cache(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, stats: CacheStats
) -> AsyncIterator[CacheAside]:
    core = CacheAside(
        redis_client,
        KeySpace(namespace),
        stats,
        CircuitBreaker(clock=clock),
        clock=clock,
        rng=random.Random(7),
        # Generous: loads are counted, so a slow GET on a busy machine must not
        # fail open. Tests of timeouts build their own core.
        redis_timeout=2.0,
    )
    try:
        yield core
    finally:
        await core.aclose()


def counts(stats: CacheStats) -> dict[Outcome, int]:
    return stats.snapshot().per_type.get(EXPERIMENT, {})


@contextlib.asynccontextmanager
async def dead_redis() -> AsyncIterator[CountingRedis]:
    """A client to a port nothing listens on, with small timeouts and no retries."""
    client = CountingRedis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield client
    finally:
        await client.aclose()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition`` holds (bounded, not a timing assertion)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


# -- hits, misses, negative caching ---------------------------------------------------


async def test_miss_then_hit(
    cache: CacheAside,
    redis_client: aioredis.Redis,
    namespace: str,
    clock: FakeClock,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    store = Loads(experiment_db)
    value = await store.put(KEY)
    first = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (first.status, first.value, first.key) == (FRESH, value, KEY)
    assert first.stored_at.timestamp() == pytest.approx(clock.now)
    second = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (second.status, second.value) == (CACHED, value)
    assert second.stored_at == first.stored_at
    assert store.calls == 1
    assert counts(stats) == {Outcome.MISS: 1, Outcome.LOAD: 1, Outcome.HIT: 1}

    # The stored bytes are an envelope any client can read, under the namespace,
    # with a TTL of fresh (jittered) plus stale.
    raw = await redis_client.get(KeySpace(namespace).redis_key(KEY))
    entry = decode(raw, EXPERIMENT)
    assert entry is not None
    assert 60.0 <= entry.fresh_until - clock.now <= 66.0
    ttl_ms = await redis_client.pttl(KeySpace(namespace).redis_key(KEY))
    assert (60 + 3600) * 1000 - 5000 <= ttl_ms <= (66 + 3600) * 1000
    # The lease was released after storing.
    assert await redis_client.exists(KeySpace(namespace).lease(KEY)) == 0


async def test_entry_expires_from_fresh_on_the_clock(
    cache: CacheAside, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    await store.put(KEY)
    await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(jitter=0.0))
    clock.advance(60.0)
    again = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(jitter=0.0))
    assert again.status == FRESH
    assert store.calls == 2


async def test_fifty_concurrent_misses_load_once(
    cache: CacheAside, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    value = await store.put(KEY)
    store.gate = asyncio.Event()
    callers = [
        asyncio.create_task(cache.get_or_load(KEY, Experiment, store.loader(KEY), policy()))
        for _ in range(50)
    ]
    await asyncio.wait_for(store.started.wait(), 5)
    await until(lambda: counts(stats).get(Outcome.MISS) == 50, "50 misses")
    store.gate.set()
    served = await asyncio.gather(*callers)
    assert store.calls == 1
    assert {s.status for s in served} == {FRESH}
    assert all(s.value == value for s in served)
    assert counts(stats)[Outcome.LOAD] == 1


async def test_not_found_is_cached_negatively(
    cache: CacheAside,
    redis_client: aioredis.Redis,
    namespace: str,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    store = Loads(experiment_db)
    for _ in range(2):
        with pytest.raises(NotFound) as caught:
            await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(negative_ttl=30))
        assert KEY in caught.value.message
    assert store.calls == 1
    assert counts(stats)[Outcome.NEGATIVE_HIT] == 1
    assert 25_000 <= await redis_client.pttl(KeySpace(namespace).redis_key(KEY)) <= 30_000


async def test_negative_entry_expires_on_the_clock(
    cache: CacheAside, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    with pytest.raises(NotFound):
        await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(negative_ttl=30))
    clock.advance(30.0)
    await store.put(KEY)
    served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(negative_ttl=30))
    assert served.status == FRESH
    assert store.calls == 2


async def test_loader_router_errors_propagate_and_are_not_cached(
    cache: CacheAside,
    stats: CacheStats,
    experiment_db: ExperimentDb,
    redis_client: aioredis.Redis,
    namespace: str,
) -> None:
    # The store's own answer about the request is a RouterError other than
    # Unavailable: a draft experiment assigns no one (EXPERIMENT_NOT_RUNNING).
    await experiment_db.put("exp-1", status="draft")
    store = PostgresStore(experiment_db.pool)
    raised: list[BaseException] = []

    async def load() -> Assignment | None:
        try:
            return await store.get_or_create_assignment("exp-1", "user-1")
        except Exception as exc:
            raised.append(exc)
            raise

    key = "assignment:exp-1:user-1"
    assignments = CachePolicy(ASSIGNMENT, fresh_ttl=60.0, stale_ttl=3600.0)
    for _ in range(2):
        with pytest.raises(FailedPrecondition) as caught:
            await cache.get_or_load(key, Assignment, load, assignments)
        assert caught.value is raised[-1]
        assert caught.value.reason == "EXPERIMENT_NOT_RUNNING"
    assert store.queries == 2
    assert Outcome.LOAD_ERROR not in stats.snapshot().per_type.get(ASSIGNMENT, {})
    await cache.settle()
    assert await redis_client.exists(KeySpace(namespace).redis_key(key)) == 0


# -- stale-if-error --------------------------------------------------------------------


async def test_store_failure_serves_stale_entry(
    cache: CacheAside, clock: FakeClock, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    value = await store.put(KEY)
    first = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    clock.advance(60.0 * 1.1)  # past any jittered fresh time, well inside the stale window
    experiment_db.down()
    stale = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (stale.status, stale.value, stale.stored_at) == (STALE, value, first.stored_at)
    assert counts(stats)[Outcome.STALE] == 1
    assert counts(stats)[Outcome.LOAD_ERROR] == 1
    [failure] = store.raised
    assert isinstance(failure, Unavailable)
    assert failure.metadata["store"] == "postgres"
    # The store recovers: the next read loads again.
    experiment_db.up()
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == FRESH
    assert store.calls == 3


async def test_store_failure_without_entry_is_unavailable(
    cache: CacheAside, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    await store.put(KEY)
    experiment_db.down()
    with pytest.raises(Unavailable) as caught:
        await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert KEY in caught.value.message
    assert "experiment" in caught.value.message
    [failure] = store.raised
    assert caught.value.__cause__ is failure
    assert isinstance(failure, Unavailable)
    assert failure.metadata["store"] == "postgres"
    assert counts(stats)[Outcome.LOAD_ERROR] == 1
    # Nothing was cached: the next read loads again.
    experiment_db.up()
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == FRESH
    assert store.calls == 2


# -- envelope trust ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xff\xff not an envelope",
        encode(
            DataType.DATA_TYPE_USER_PROFILE, b"", stored_at=1.0, fresh_until=4e9, load_duration=0
        ),
        CacheEnvelope(data_type=EXPERIMENT, schema_version=99, not_found=True).SerializeToString(),
        encode(EXPERIMENT, b"\xff\xff", stored_at=1.0, fresh_until=4e9, load_duration=0),
    ],
    ids=["garbage", "other-type", "future-schema", "bad-payload"],
)
async def test_untrusted_entries_are_misses_and_overwritten(
    cache: CacheAside,
    redis_client: aioredis.Redis,
    namespace: str,
    raw: bytes,
    experiment_db: ExperimentDb,
) -> None:
    await redis_client.set(KeySpace(namespace).redis_key(KEY), raw)
    store = Loads(experiment_db)
    value = await store.put(KEY)
    served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (served.status, served.value) == (FRESH, value)
    assert (
        decode(await redis_client.get(KeySpace(namespace).redis_key(KEY)), EXPERIMENT) is not None
    )
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == CACHED


# -- leases across instances -----------------------------------------------------------


async def test_lease_makes_second_instance_wait_for_the_first(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    # Two CacheAside objects with their own single-flight maps are two processes.
    stats_a, stats_b = CacheStats(), CacheStats()
    a = CacheAside(
        redis_client, KeySpace(namespace), stats_a, CircuitBreaker(), clock=clock, redis_timeout=2.0
    )
    b = CacheAside(
        redis_client, KeySpace(namespace), stats_b, CircuitBreaker(), clock=clock, redis_timeout=2.0
    )
    store_a, store_b = Loads(experiment_db), Loads(experiment_db)
    value = await store_a.put(KEY)  # one table: both instances read the same row
    store_a.gate = asyncio.Event()
    slow_lease = policy(lease_ttl_ms=10_000, lease_wait_ms=1_200)
    try:
        first = asyncio.create_task(a.get_or_load(KEY, Experiment, store_a.loader(KEY), slow_lease))
        await asyncio.wait_for(store_a.started.wait(), 5)
        second = asyncio.create_task(
            b.get_or_load(KEY, Experiment, store_b.loader(KEY), slow_lease)
        )
        await until(lambda: counts(stats_b).get(Outcome.LEASE_WAIT) == 1, "b waits on the lease")
        store_a.gate.set()
        served_a, served_b = await asyncio.gather(first, second)
    finally:
        await a.aclose()
        await b.aclose()
    assert (served_a.status, served_b.status) == (FRESH, CACHED)
    assert served_b.value == value
    assert (store_a.calls, store_b.calls) == (1, 0)


async def test_lease_of_a_vanished_instance_only_delays(
    cache: CacheAside,
    redis_client: aioredis.Redis,
    namespace: str,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    # Another instance took the lease and died before storing anything.
    await redis_client.set(KeySpace(namespace).lease(KEY), b"someone-else", px=10_000)
    store = Loads(experiment_db)
    await store.put(KEY)
    served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(lease_wait_ms=40))
    assert served.status == FRESH
    assert store.calls == 1
    assert counts(stats)[Outcome.LEASE_WAIT] == 1
    # Not our lease: it is left alone for its owner (or its PX) to remove.
    assert await redis_client.get(KeySpace(namespace).lease(KEY)) == b"someone-else"


# -- cancellation -------------------------------------------------------------------------


async def test_cancelled_first_caller_does_not_cancel_the_load(
    cache: CacheAside, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    value = await store.put(KEY)
    store.gate = asyncio.Event()
    first = asyncio.create_task(cache.get_or_load(KEY, Experiment, store.loader(KEY), policy()))
    await asyncio.wait_for(store.started.wait(), 5)
    others = [
        asyncio.create_task(cache.get_or_load(KEY, Experiment, store.loader(KEY), policy()))
        for _ in range(5)
    ]
    await until(lambda: counts(stats).get(Outcome.MISS) == 6, "all callers missed")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    store.gate.set()
    served = await asyncio.gather(*others)
    assert [s.value for s in served] == [value] * 5
    assert {s.status for s in served} == {FRESH}
    assert store.calls == 1
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == CACHED


# -- XFetch ---------------------------------------------------------------------------------


async def _refresh_due(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, store: Loads
) -> CacheAside:
    """A cache holding KEY in Redis, 1 s before expiry: the next read refreshes early."""
    cache = CacheAside(
        redis_client,
        KeySpace(namespace),
        CacheStats(),
        CircuitBreaker(),
        clock=clock,
        rng=FixedRandom(0.01),
    )
    await store.put(KEY, version=1)
    await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy(jitter=0.0, fresh_ttl=100.0))
    await cache.settle()
    clock.advance(99.0)
    return cache


async def test_a_failed_early_refresh_is_logged_and_the_cached_value_served(
    redis_client: aioredis.Redis,
    namespace: str,
    clock: FakeClock,
    experiment_db: ExperimentDb,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refresh whose store answers with a refusal (a RouterError, not an
    outage, which keeps the fresh entry quietly): the cached value is served
    and the refusal logged."""
    store = Loads(experiment_db, clock=clock, load_seconds=2.0)
    cache = await _refresh_due(redis_client, namespace, clock, store)
    real = store.loader(KEY)

    async def refused() -> Experiment | None:
        await real()  # the real query runs; the answer is then refused
        raise FailedPrecondition("experiment archived")

    try:
        exact = policy(jitter=0.0, fresh_ttl=100.0)
        served = await cache.get_or_load(KEY, Experiment, refused, exact)
        assert served.status == CACHED
        await eventually(
            lambda: any("early refresh failed" in r.getMessage() for r in caplog.records),
            "the refresh's failure logged",
        )
        [record] = [r for r in caplog.records if "early refresh failed" in r.getMessage()]
        assert "FailedPrecondition: experiment archived" in record.getMessage()
        assert store.calls == 2  # the first load and the refresh
    finally:
        await cache.aclose()


async def test_an_early_refresh_cancelled_at_shutdown_reports_nothing(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    store = Loads(experiment_db, clock=clock, load_seconds=2.0)
    cache = await _refresh_due(redis_client, namespace, clock, store)
    try:
        store.gate, store.started = asyncio.Event(), asyncio.Event()
        exact = policy(jitter=0.0, fresh_ttl=100.0)
        assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)).status == CACHED
        await store.started.wait()  # the refresh is loading, held at the gate
        await cache.aclose()  # cancels it
        await asyncio.sleep(0)  # done callbacks run
        assert reported == []
    finally:
        loop.set_exception_handler(previous)
        await cache.aclose()


async def test_early_refresh_runs_in_background(
    redis_client: aioredis.Redis,
    namespace: str,
    clock: FakeClock,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    # u = 0.01 gives a head start of -ln(0.01) * 2 s = 9.2 s before fresh_until.
    cache = CacheAside(
        redis_client,
        KeySpace(namespace),
        stats,
        CircuitBreaker(),
        clock=clock,
        rng=FixedRandom(0.01),
    )
    store = Loads(experiment_db, clock=clock, load_seconds=2.0)
    await store.put(KEY, version=1)
    exact = policy(jitter=0.0, fresh_ttl=100.0)
    try:
        first = await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)
        assert first.status == FRESH
        await cache.settle()  # in Redis: the next reads are Redis hits
        clock.advance(50.0)  # 50 s before expiry: no refresh yet
        assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)).status == CACHED
        assert store.calls == 1
        clock.advance(49.0)  # 1 s before expiry, inside the head start
        await store.put(KEY, version=2)
        served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)
        assert (served.status, served.value.version) == (CACHED, 1)
        assert counts(stats)[Outcome.EARLY_REFRESH] == 1

        async def refreshed() -> bool:
            entry = decode(await redis_client.get(KeySpace(namespace).redis_key(KEY)), EXPERIMENT)
            return entry is not None and Experiment.FromString(entry.payload).version == 2

        for _ in range(1000):
            if await refreshed():
                break
            await asyncio.sleep(0.005)
        assert store.calls == 2
        newer = await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)
        assert (newer.status, newer.value.version) == (CACHED, 2)
    finally:
        await cache.aclose()
    assert store.calls == 2


async def test_aclose_cancels_pending_refreshes(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    cache = CacheAside(
        redis_client,
        KeySpace(namespace),
        CacheStats(),
        CircuitBreaker(),
        clock=clock,
        rng=FixedRandom(1e-9),
    )
    store = Loads(experiment_db, clock=clock, load_seconds=1.0)
    await store.put(KEY)
    exact = policy(jitter=0.0)
    await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)
    await cache.settle()  # in Redis: the next reads are Redis hits
    store.gate = asyncio.Event()  # the refresh hangs in the store
    store.started.clear()
    clock.advance(50.0)  # 10 s before expiry, inside the 20.7 s head start of u = 1e-9
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), exact)).status == CACHED
    await asyncio.wait_for(store.started.wait(), 5)
    await cache.aclose()  # returns although the store never answers
    assert store.calls == 2


# -- fail open and the circuit breaker ----------------------------------------------------


async def test_dead_redis_fails_open_and_breaker_stops_calls(
    namespace: str, clock: FakeClock, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=2.0, clock=clock)
    store = Loads(experiment_db)
    value = await store.put(KEY)
    async with dead_redis() as dead:
        cache = CacheAside(dead, KeySpace(namespace), stats, breaker, clock=clock)
        for _ in range(3):
            served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
            assert (served.status, served.value) == (FRESH, value)
        assert breaker.state == "open"
        assert dead.calls == 3
        assert stats.redis_errors == 3
        for _ in range(5):
            served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
            assert served.status == FRESH
        # While open, Redis is not even tried.
        assert dead.calls == 3
        assert stats.redis_errors == 3
        assert store.calls == 8
        # After reset_timeout one probe goes out; it fails and the breaker re-opens.
        clock.advance(2.0)
        assert breaker.state == "half_open"
        assert (
            await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
        ).status == FRESH
        assert dead.calls == 4
        assert breaker.state == "open"
        await cache.aclose()


async def test_breaker_closes_when_redis_is_back(
    redis_client: aioredis.Redis,
    namespace: str,
    clock: FakeClock,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=2.0, clock=clock)
    store = Loads(experiment_db)
    await store.put(KEY)
    async with dead_redis() as dead:
        down = CacheAside(dead, KeySpace(namespace), stats, breaker, clock=clock)
        for _ in range(2):
            await down.get_or_load(KEY, Experiment, store.loader(KEY), policy())
        await down.aclose()
    assert breaker.state == "open"
    # Redis is back: the same breaker now guards a client of a live server.
    up = CacheAside(
        redis_client, KeySpace(namespace), stats, breaker, clock=clock, redis_timeout=2.0
    )
    try:
        assert (await up.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == FRESH
        assert breaker.state == "open"  # still open: Redis was skipped
        clock.advance(2.0)
        assert (await up.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == FRESH
        assert breaker.state == "closed"  # the probe succeeded
        assert (await up.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == CACHED
    finally:
        await up.aclose()
    assert store.calls == 4


async def test_unresponsive_redis_is_bounded_by_the_timeout(
    namespace: str,
    clock: FakeClock,
    stats: CacheStats,
    experiment_db: ExperimentDb,
    tmp_path: Path,
) -> None:
    # A private Valkey paused with SIGSTOP: the kernel still accepts connections,
    # nothing answers, and only our timeout ends calls.
    with restartable_valkey(tmp_path / "valkey") as valkey:
        client = aioredis.Redis.from_url(valkey.url, socket_timeout=30, retry=Retry(NoBackoff(), 0))
        store = Loads(experiment_db)
        await store.put(KEY)
        cache = CacheAside(
            client,
            KeySpace(namespace),
            stats,
            CircuitBreaker(failure_threshold=2, clock=clock),
            clock=clock,
            redis_timeout=0.05,
        )
        try:
            with frozen(valkey_pid(valkey.url)):
                for _ in range(3):
                    served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
                    assert served.status == FRESH
                assert stats.redis_errors == 2
                assert cache.breaker.state == "open"
        finally:
            await cache.aclose()
            await client.aclose()


# -- invalidation ---------------------------------------------------------------------------


async def test_invalidate_removes_keys_and_next_read_is_fresh(
    cache: CacheAside, stats: CacheStats, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    await store.put(KEY)
    await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == CACHED
    assert await cache.invalidate([KEY, "experiment:never-cached", KEY]) == 1
    assert await cache.invalidate([]) == 0
    assert stats.invalidations == 1
    assert (await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())).status == FRESH
    assert store.calls == 2


async def test_invalidate_during_a_load_keeps_its_result_out_of_the_cache(
    cache: CacheAside, redis_client: aioredis.Redis, namespace: str, experiment_db: ExperimentDb
) -> None:
    store = Loads(experiment_db)
    await store.put(KEY, version=1)
    store.gate_after = asyncio.Event()
    reader = asyncio.create_task(cache.get_or_load(KEY, Experiment, store.loader(KEY), policy()))
    await asyncio.wait_for(store.queried.wait(), 5)  # the old value is read ...
    await store.put(KEY, version=2)  # ... a write commits while the load is in flight ...
    await cache.invalidate([KEY])  # ... and invalidates
    store.gate_after.set()
    served = await reader
    assert (served.status, served.value.version) == (FRESH, 1)  # the reader gets an answer
    await cache.settle()
    assert (
        await redis_client.exists(KeySpace(namespace).redis_key(KEY)) == 0
    )  # but it was not cached
    store.gate_after = None
    after = await cache.get_or_load(KEY, Experiment, store.loader(KEY), policy())
    assert (after.status, after.value.version) == (FRESH, 2)


async def test_invalidate_raises_when_redis_is_down(namespace: str, stats: CacheStats) -> None:
    async with dead_redis() as dead:
        cache = CacheAside(dead, KeySpace(namespace), stats, CircuitBreaker())
        with pytest.raises(CacheUnavailable) as caught:
            await cache.invalidate([KEY])
    assert KEY in caught.value.message
    assert isinstance(caught.value.__cause__, RedisError | OSError)
    assert stats.redis_errors == 1


async def test_invalidate_failure_names_keys_and_patterns(
    namespace: str, stats: CacheStats
) -> None:
    keys = [f"experiment:e{i}" for i in range(25)]
    patterns = [f"analytics:e{i}:*" for i in range(21)]
    async with dead_redis() as dead:
        cache = CacheAside(dead, KeySpace(namespace), stats, CircuitBreaker())
        with pytest.raises(CacheUnavailable) as caught:
            await cache.invalidate([*keys, keys[0]], patterns)
    shown = ", ".join(repr(k) for k in keys[:5])
    assert caught.value.message == (
        f"could not invalidate {shown}: Redis failed and the cache may still "
        "hold the old values; retry"
    )
    assert caught.value.metadata == {"key": ",".join(keys[:20]), "pattern": ",".join(patterns[:20])}


# -- disabled policy ------------------------------------------------------------------------


async def test_disabled_policy_touches_no_redis(
    redis_url: str,
    namespace: str,
    redis_client: aioredis.Redis,
    stats: CacheStats,
    experiment_db: ExperimentDb,
) -> None:
    counting = CountingRedis.from_url(redis_url)
    cache = CacheAside(counting, KeySpace(namespace), stats, CircuitBreaker())
    store = Loads(experiment_db)
    await store.put(KEY)
    off = policy(enabled=False)
    try:
        for _ in range(3):
            served = await cache.get_or_load(KEY, Experiment, store.loader(KEY), off)
            assert served.status == FRESH
        with pytest.raises(NotFound):
            await cache.get_or_load("experiment:nope", Experiment, store.loader("x:nope"), off)
    finally:
        await cache.aclose()
        await counting.aclose()
    assert counting.calls == 0
    assert store.calls == 4
    assert [k async for k in redis_client.scan_iter(match=namespace + "*")] == []


async def test_a_write_on_another_instance_beats_a_load_in_flight(
    redis_client: aioredis.Redis, namespace: str, clock: FakeClock, experiment_db: ExperimentDb
) -> None:
    """Instance A reads the store, instance B writes and invalidates, then A
    finishes: A's old value must not land in the cache (its lease was removed)."""
    store = Loads(experiment_db)
    await store.put(KEY, version=1)
    store.gate_after = asyncio.Event()
    instance_a = CacheAside(
        redis_client, KeySpace(namespace), CacheStats(), CircuitBreaker(), clock=clock
    )
    instance_b = CacheAside(
        redis_client, KeySpace(namespace), CacheStats(), CircuitBreaker(), clock=clock
    )
    try:
        reading = asyncio.create_task(
            instance_a.get_or_load(KEY, Experiment, store.loader(KEY), policy())
        )
        await store.queried.wait()  # A holds the lease and has read version 1
        await store.put(KEY, version=2)  # B's write commits ...
        await instance_b.invalidate([KEY])  # ... and invalidates
        store.gate_after.set()  # A's load returns the value it read before the write
        served = await reading
        assert (served.status, served.value.version) == (FRESH, 1)
        await instance_a.settle()
        assert await redis_client.exists(KeySpace(namespace).redis_key(KEY)) == 0  # not stored
        store.gate_after = None
        again = await instance_b.get_or_load(KEY, Experiment, store.loader(KEY), policy())
        assert (again.status, again.value.version) == (FRESH, 2)
    finally:
        await instance_a.aclose()
        await instance_b.aclose()
