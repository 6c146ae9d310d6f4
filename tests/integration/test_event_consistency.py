"""Regression tests of the consistency issue's event paths, on real chDB and real Redis.

Each test names the path it closes. Faults are injected around real
components: an insert held at a gate (the event is claimed, its insert is in
flight), an insert that fails because it is sent to an HTTP ClickHouse URL on
a port nothing listens on (a real driver failure), a private Valkey that the
test stops or freezes (never the machine's shared Redis). Tests synchronise on
conditions, never on sleeps, and never assert on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors, wiring
from mcprouter.server.cache import CacheAside
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import ClickHouseProcessor
from mcprouter.server.clickhouse.store import ClickHouseStore, open_clickhouse
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event, EventMetrics, TrackEventsResult
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.backends import RestartableValkey, restartable_valkey, unique_namespace
from tests.integration.test_clickhouse_processor import closed_port, event, hour_of, policies

STORED = ServeStatus.SERVE_STATUS_STORED
DUPLICATE = ServeStatus.SERVE_STATUS_DUPLICATE
FRESH = ServeStatus.SERVE_STATUS_FRESH
CACHED = ServeStatus.SERVE_STATUS_CACHED
# The documented default of DEDUP_PENDING_TTL_S: the longest a crashed claim blocks retries.
DEFAULT_PENDING_TTL_S = 90


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb-events") / "clickhouse"


@pytest.fixture(scope="module")
async def store(chdb_path: Path) -> AsyncIterator[ClickHouseStore]:
    store = await open_clickhouse(f"chdb://{chdb_path}")
    await store.migrate()
    yield store
    await store.close()


@dataclass
class Rig:
    """One instance's ClickHouse processor over the shared chDB store and one Redis."""

    processor: ClickHouseProcessor
    store: ClickHouseStore
    cache: CacheAside
    stats: CacheStats
    redis: aioredis.Redis
    namespace: str
    experiments: dict[str, Experiment]
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    fail_inserts: bool = False

    def add_experiment(self) -> str:
        exp_id = f"e-{uuid.uuid4().hex[:10]}"
        self.experiments[exp_id] = Experiment(
            experiment_id=exp_id,
            status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            variants=[Variant(name=v, weight=1) for v in ("control", "treatment")],
        )
        return exp_id

    def marker(self, event_id: str) -> str:
        return KeySpace(self.namespace).internal("dedup", event_id)

    async def track(self, events: Sequence[Event]) -> TrackEventsResult:
        result = await self.processor.track_events(rs.TrackEventsOperation(events=events))
        assert isinstance(result.value, TrackEventsResult)
        return result.value

    async def metrics(self, exp_id: str, hour: datetime) -> tuple[int, int]:
        op = rs.GetEventMetricsOperation(experiment_id=exp_id, variant="control", metric="click")
        op.hour.FromDatetime(hour)
        result = await self.processor.get_event_metrics(op)
        assert isinstance(result.value, EventMetrics)
        return result.status, result.value.count


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(store: ClickHouseStore, redis_url: str) -> AsyncIterator[RigFactory]:
    """``await make_rig(redis_url=..., namespace=..., experiments=...)``: an instance.

    Inserts go to the real chDB store, after the rig's gate opens (it starts
    open); with ``fail_inserts`` they go to an HTTP ClickHouse URL nobody
    listens on, and fail as the driver fails.
    """
    made: list[tuple[Rig, EventBatcher[Event], aioredis.Redis]] = []
    dead_url = f"http://127.0.0.1:{closed_port()}"

    async def make(
        *,
        url: str = redis_url,
        namespace: str | None = None,
        experiments: dict[str, Experiment] | None = None,
        redis_timeout: float = 2.0,
    ) -> Rig:
        namespace = namespace or unique_namespace()
        client = create_redis(url, pool_size=16, timeout_s=redis_timeout, pool_timeout_s=5.0)
        stats, keyspace = CacheStats(), KeySpace(namespace)
        core = wiring.cache_core(client, keyspace, stats, redis_timeout_s=redis_timeout)
        cache = core.cache
        shared = experiments if experiments is not None else {}
        holder: list[Rig] = []

        async def insert(events: Sequence[Event]) -> None:
            rig = holder[0]
            rig.waiting += 1
            try:
                await rig.gate.wait()
            finally:
                rig.waiting -= 1
            if rig.fail_inserts:
                dead = await open_clickhouse(dead_url)
                try:
                    await dead.insert_events(events)
                finally:
                    await dead.close()
            else:
                await store.insert_events(events)

        async def lookup(exp_id: str) -> Experiment | None:
            return shared.get(exp_id)

        batcher: EventBatcher[Event] = EventBatcher(insert, max_batch=5000, max_delay_ms=5)
        processor = wiring.clickhouse_processor(
            core, store, batcher, policies=policies(), experiments=lookup
        )
        rig = Rig(processor, store, cache, stats, client, namespace, shared)
        rig.gate.set()
        holder.append(rig)
        made.append((rig, batcher, client))
        return rig

    yield make
    for rig, batcher, client in reversed(made):
        rig.gate.set()
        await rig.processor.aclose()
        await batcher.aclose()
        await rig.cache.aclose()
        with contextlib.suppress(Exception):
            keys = [k async for k in client.scan_iter(match=rig.namespace + "*", count=500)]
            if keys:
                await client.unlink(*keys)
        await client.aclose()


async def eventually(condition: Callable[[], bool], what: str, *, tries: int = 1000) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not reached")


async def eventually_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(1000):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not reached")


def valkey_pid(server: RestartableValkey) -> int:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


@contextlib.contextmanager
def frozen(server: RestartableValkey) -> Iterator[Callable[[], None]]:
    """SIGSTOP our private Valkey; yields a function that thaws it (also done on exit)."""
    pid = valkey_pid(server)
    os.kill(pid, signal.SIGSTOP)
    thawed = False

    def thaw() -> None:
        nonlocal thawed
        if not thawed:
            thawed = True
            os.kill(pid, signal.SIGCONT)

    try:
        yield thaw
    finally:
        thaw()


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[RestartableValkey]:
    with restartable_valkey(tmp_path / "valkey") as server:
        yield server


# --- 5. acknowledged events lost ----------------------------------------------------


async def test_path5_a_retry_while_the_first_attempt_is_in_flight_is_never_duplicate(
    make_rig: RigFactory,
) -> None:
    """The client retries while its first attempt waits for ClickHouse; that
    insert then fails. The retry must not be DUPLICATE (the event would be
    acknowledged twice and stored nowhere): it is UNAVAILABLE EVENTS_IN_FLIGHT,
    and once the first attempt failed, a retry stores it."""
    rig = await make_rig()
    exp = rig.add_experiment()
    e = event(exp)
    rig.gate.clear()
    first = asyncio.create_task(rig.track([e]))
    await eventually(lambda: rig.waiting == 1, "first attempt claimed and inserting")

    with pytest.raises(errors.Unavailable) as caught:
        await rig.track([e])  # the retry, while the first attempt is in flight
    assert caught.value.reason == "EVENTS_IN_FLIGHT"
    assert caught.value.metadata["event_ids"] == e.event_id

    rig.fail_inserts = True
    rig.gate.set()
    with pytest.raises(errors.Unavailable):
        await first
    assert await rig.store.count_events(exp) == 0

    rig.fail_inserts = False
    retried = await rig.track([e])
    assert [o.status for o in retried.outcomes] == [STORED]
    assert await rig.store.count_events(exp) == 1
    again = await rig.track([e])
    assert [o.status for o in again.outcomes] == [DUPLICATE]


async def test_path5_a_batch_with_an_id_in_flight_claims_nothing(make_rig: RigFactory) -> None:
    """All or nothing: one id in flight makes the whole request UNAVAILABLE and
    claims none of its other ids, so the client resends the same batch."""
    rig = await make_rig()
    exp = rig.add_experiment()
    busy, other, done = event(exp), event(exp, user="u2"), event(exp, user="u3")
    assert (await rig.track([done])).stored == 1
    rig.gate.clear()
    first = asyncio.create_task(rig.track([busy]))
    await eventually(lambda: rig.waiting == 1, "first attempt inserting")
    second = asyncio.create_task(rig.track([done, other, busy]))

    async def answered_or_claimed() -> bool:
        return second.done() or bool(await rig.redis.exists(rig.marker(other.event_id)))

    await eventually_async(answered_or_claimed, "second request answered")
    assert second.done(), "the second request claimed ids and went on to insert them"
    with pytest.raises(errors.Unavailable) as caught:
        await second
    assert caught.value.reason == "EVENTS_IN_FLIGHT"
    assert caught.value.metadata["event_ids"] == busy.event_id
    assert not await rig.redis.exists(rig.marker(other.event_id))  # nothing was claimed
    rig.gate.set()
    assert (await first).stored == 1
    result = await rig.track([done, other, busy])
    assert [o.status for o in result.outcomes] == [DUPLICATE, STORED, DUPLICATE]
    assert await rig.store.count_events(exp) == 3


async def test_path5_a_crash_between_claim_and_insert_blocks_retries_only_for_the_pending_ttl(
    make_rig: RigFactory,
) -> None:
    """Instance A claims an event and "crashes" before its insert (it is held
    forever, then fails). Instance B is asked to retry: EVENTS_IN_FLIGHT while
    A's claim is pending, and A's claim lives the pending TTL, not 7 days; once
    it has run out B stores the event, and A's late release (compare-and-delete)
    does not remove B's record."""
    a = await make_rig()
    b = await make_rig(namespace=a.namespace, experiments=a.experiments)
    exp = a.add_experiment()
    e = event(exp)
    a.gate.clear()
    crashed = asyncio.create_task(a.track([e]))
    await eventually(lambda: a.waiting == 1, "instance A claimed the event")

    ttl = await a.redis.ttl(a.marker(e.event_id))
    assert 0 < ttl <= DEFAULT_PENDING_TTL_S, ttl
    with pytest.raises(errors.Unavailable) as caught:
        await b.track([e])
    assert caught.value.reason == "EVENTS_IN_FLIGHT"

    # The pending TTL runs out (shortened here instead of waiting for it).
    await a.redis.pexpire(a.marker(e.event_id), 1)
    await eventually_async(
        lambda: _gone(a.redis, a.marker(e.event_id)), "the pending claim expired"
    )
    assert [o.status for o in (await b.track([e])).outcomes] == [STORED]

    a.fail_inserts = True
    a.gate.set()
    with pytest.raises(errors.Unavailable):
        await crashed
    assert await a.redis.get(a.marker(e.event_id)) == b"1"  # B's done record survived
    assert [o.status for o in (await b.track([e])).outcomes] == [DUPLICATE]
    assert await a.store.count_events(exp) == 1


async def test_path5_killed_after_its_insert_a_restarted_instance_settles_the_pending_records(
    make_rig: RigFactory,
) -> None:
    """Instance A inserted an event and was killed before marking its record
    done (the record is still A's pending claim). A restarts on the same
    embedded engine: before it serves, the record is done, so the client's
    retry, on A or on B, is DUPLICATE instead of waiting out the pending TTL
    and storing a second copy (in another instance's database, with embedded
    engines)."""
    a = await make_rig()
    b = await make_rig(namespace=a.namespace, experiments=a.experiments)
    exp = a.add_experiment()
    stored, never_inserted = event(exp), event(exp, user="u-never")
    await a.redis.set(a.marker(stored.event_id), "A-claim", ex=DEFAULT_PENDING_TTL_S)
    await a.redis.set(a.marker(never_inserted.event_id), "A-claim", ex=DEFAULT_PENDING_TTL_S)
    await a.store.insert_events([stored])  # ...and A is killed here

    restarted = await make_rig(namespace=a.namespace, experiments=a.experiments)
    await restarted.processor.start()

    assert await a.redis.get(a.marker(stored.event_id)) == b"1"
    assert await a.redis.ttl(a.marker(stored.event_id)) > DEFAULT_PENDING_TTL_S
    # An event A claimed but never inserted stays A's claim until its TTL runs out.
    assert await a.redis.get(a.marker(never_inserted.event_id)) == b"A-claim"
    assert [o.status for o in (await b.track([stored])).outcomes] == [DUPLICATE]
    assert [o.status for o in (await restarted.track([stored])).outcomes] == [DUPLICATE]
    assert await a.store.count_events(exp) == 1


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return not await client.exists(key)


async def test_path5_done_record_lost_to_a_redis_outage_is_written_once_redis_is_back(
    make_rig: RigFactory, private_valkey: RestartableValkey
) -> None:
    """The insert succeeded but Redis went down before the record was marked
    done: the event is stored, so the answer is STORED (not an error), and the
    done record is retried until Redis takes it (here: a restarted, empty Redis)."""
    rig = await make_rig(url=private_valkey.url, redis_timeout=0.5)
    exp = rig.add_experiment()
    e = event(exp)
    rig.gate.clear()
    task = asyncio.create_task(rig.track([e]))
    await eventually(lambda: rig.waiting == 1, "claimed and inserting")
    private_valkey.stop()
    rig.gate.set()
    result = await task
    assert [o.status for o in result.outcomes] == [STORED]
    assert await rig.store.count_events(exp) == 1

    private_valkey.restart()
    await eventually_async(
        lambda: _equals(rig.redis, rig.marker(e.event_id), b"1"),
        "the done record written after Redis came back",
    )
    assert await rig.redis.ttl(rig.marker(e.event_id)) > DEFAULT_PENDING_TTL_S
    assert [o.status for o in (await rig.track([e])).outcomes] == [DUPLICATE]


async def _equals(client: aioredis.Redis, key: str, value: bytes) -> bool:
    with contextlib.suppress(Exception):
        return bool(await client.get(key) == value)
    return False


# --- 6. late-event invalidation gives up ----------------------------------------------


async def test_path6_late_event_invalidation_is_retried_until_redis_takes_it(
    make_rig: RigFactory, private_valkey: RestartableValkey
) -> None:
    """A late event for a closed, cached hour is stored while Redis is frozen:
    it is acknowledged STORED, and the cached hour is removed once Redis thaws
    (not left cached for the policy's days)."""
    rig = await make_rig(url=private_valkey.url, redis_timeout=0.3)
    exp = rig.add_experiment()
    hour = hour_of(datetime.now(UTC)) - timedelta(hours=3)
    await rig.track([event(exp, user=f"u{i}", at=hour + timedelta(minutes=i)) for i in range(3)])
    assert await rig.metrics(exp, hour) == (FRESH, 3)
    assert await rig.metrics(exp, hour) == (CACHED, 3)
    await rig.cache.settle()
    cached = KeySpace(rig.namespace).redis_key(f"metrics:{exp}:control:click:{hour:%Y%m%d%H}")
    assert await rig.redis.exists(cached)

    rig.gate.clear()
    late_event = event(exp, user="late", at=hour + timedelta(minutes=59))
    late = asyncio.create_task(rig.track([late_event]))
    await eventually(lambda: rig.waiting == 1, "late event claimed and inserting")
    with frozen(private_valkey) as thaw:
        rig.gate.set()
        assert (await late).stored == 1
        thaw()
    await eventually_async(lambda: _gone(rig.redis, cached), "the closed hour invalidated")
    assert await rig.metrics(exp, hour) == (FRESH, 4)


# --- 10. one thread for every ClickHouse call -------------------------------------------

SLOW_QUERY = "SELECT sleepEachRow(0.5) /* path10-slow */ FROM numbers(30)"


async def test_path10_an_insert_is_acknowledged_while_a_slow_query_runs(
    make_rig: RigFactory, chdb_path: Path
) -> None:
    """A long analytics-like query is running in ClickHouse; an event tracked
    meanwhile is inserted and acknowledged before that query ends (the order
    of what is observed, not durations)."""
    import threading

    import clickhouse_connect

    rig = await make_rig()
    exp = rig.add_experiment()
    order: list[str] = []
    started = threading.Event()

    def slow(client: object) -> None:
        started.set()
        client.query(SLOW_QUERY, settings={"max_block_size": 1})  # type: ignore[attr-defined]

    async def run_slow() -> None:
        with contextlib.suppress(Exception):  # it ends killed (below) or by itself
            await rig.store.run(slow)
        order.append("query ended")

    # A separate engine handle of the test's own, to watch and end the query.
    observer = await asyncio.to_thread(clickhouse_connect.get_client, dsn=f"chdb://{chdb_path}")

    def running() -> bool:
        rows = observer.query(
            "SELECT count() FROM system.processes WHERE query LIKE '%path10-slow%' "
            "AND query NOT LIKE '%system.processes%'"
        ).result_rows
        return bool(rows[0][0])

    slow_task = asyncio.create_task(run_slow())
    try:
        await eventually(started.is_set, "the slow query was sent")
        await eventually_async(lambda: asyncio.to_thread(running), "the slow query runs")
        result = await rig.track([event(exp)])
        order.append("acknowledged")
        assert result.stored == 1
    finally:
        await asyncio.to_thread(
            observer.command,
            "KILL QUERY WHERE query LIKE '%path10-slow%' AND query NOT LIKE '%KILL%' SYNC",
        )
        await slow_task
        await asyncio.to_thread(observer.close)
    assert order == ["acknowledged", "query ended"]
    assert await rig.store.count_events(exp) == 1


# --- real-time counters behind the guarded Redis door ------------------------------------


async def test_realtime_counters_go_through_the_guarded_redis_door(
    make_rig: RigFactory, private_valkey: RestartableValkey
) -> None:
    """Reads of the open hour's counters count toward the circuit breaker like
    every other Redis call, so a Redis outage stops costing each read a
    timeout; the figures then come from ClickHouse."""
    rig = await make_rig(url=private_valkey.url, redis_timeout=0.3)
    exp = rig.add_experiment()
    now = datetime.now(UTC)
    hour = hour_of(now)
    assert (await rig.track([event(exp, at=max(hour, now - timedelta(seconds=1)))])).stored == 1
    assert await rig.metrics(exp, hour) == (FRESH, 1)  # from the counters
    private_valkey.stop()
    for _ in range(rig.cache.breaker.failure_threshold):
        assert await rig.metrics(exp, hour) == (FRESH, 1)  # from ClickHouse
    assert rig.cache.breaker.state != "closed"
