"""The ClickHouse processor on the real engine (chDB via clickhouse-connect) and real Redis.

Experiments come from PostgreSQL through the cache, as the server wires it
(``experiment_lookup`` over ``PostgresStore.get_experiment``). A failed insert
is a real one: the batch goes to a ClickHouse client of a closed port.

Properties are shown by counting: rows in ClickHouse, inserts and queries of
the store, outcomes of the cache; never by timing. chDB opens one data path
per process, so the module shares one store and isolates tests by experiment id.
"""

from __future__ import annotations

import asyncio
import math
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors, wiring
from mcprouter.server.cache import CacheAside, CachePolicy
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import (
    CONVERSION_EVENT_TYPE,
    ClickHousePolicies,
    ClickHouseProcessor,
    experiment_lookup,
)
from mcprouter.server.clickhouse.schema import apply_clickhouse_migrations
from mcprouter.server.clickhouse.store import ClickHouseStore, open_clickhouse
from mcprouter.server.keys import KeySpace
from mcprouter.server.operations import validated as validate_route_data
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Analytics, Event, EventMetrics, TrackEventsResult
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests.conditions import eventually

CACHED = ServeStatus.SERVE_STATUS_CACHED
FRESH = ServeStatus.SERVE_STATUS_FRESH
STORED = ServeStatus.SERVE_STATUS_STORED
DUPLICATE = ServeStatus.SERVE_STATUS_DUPLICATE


def closed_port() -> int:
    """A TCP port nothing listens on (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClickHouseStore]:
    path: Path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    store = await open_clickhouse(f"chdb://{path}")
    assert await store.migrate() == ["0001_events"]
    assert await store.migrate() == []  # idempotent
    yield store
    await store.close()


def policies() -> ClickHousePolicies:
    def make(data_type: DataType.ValueType, fresh: float) -> CachePolicy:
        return CachePolicy(data_type=data_type, fresh_ttl=fresh, xfetch_beta=0.0)

    return ClickHousePolicies(
        event_metrics=make(DataType.DATA_TYPE_EVENT_METRICS, 900),
        analytics=make(DataType.DATA_TYPE_ANALYTICS, 7200),
        closed_hour=make(DataType.DATA_TYPE_EVENT_METRICS, 7 * 86_400),
    )


@dataclass
class Rig:
    processor: ClickHouseProcessor
    store: ClickHouseStore
    batcher: EventBatcher[Event]
    cache: CacheAside
    stats: CacheStats
    postgres: PostgresStore
    unreachable: ClickHouseStore
    inserts_to: ClickHouseStore  # where the batcher's inserts go: ``store`` or ``unreachable``

    async def add_experiment(self, variants: Sequence[str] = ("control", "treatment")) -> str:
        """A running experiment, created in PostgreSQL as the upsert RPC creates it."""
        exp_id = f"e-{uuid.uuid4().hex[:10]}"
        await self.postgres.upsert_experiment(
            Experiment(
                experiment_id=exp_id,
                name=f"name of {exp_id}",
                status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
                variants=[Variant(name=v, weight=1) for v in variants],
            )
        )
        return exp_id

    def clickhouse_down(self) -> None:
        """Inserts go to a real ClickHouse client of a port nothing listens on."""
        self.inserts_to = self.unreachable

    def clickhouse_up(self) -> None:
        self.inserts_to = self.store


@pytest.fixture
async def pooled_redis(
    redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[aioredis.Redis]:
    """A client over a blocking pool, as the server builds it: callers wait for a
    connection instead of failing with "Too many connections". ``redis_client``
    is requested for its clean-up of the test's namespace."""
    client = create_redis(redis_url, pool_size=32, timeout_s=2.0, pool_timeout_s=5.0)
    yield client
    await client.aclose()


@pytest.fixture
async def rig(
    store: ClickHouseStore, pooled_redis: aioredis.Redis, namespace: str, pool: asyncpg.Pool
) -> AsyncIterator[Rig]:
    redis_client = pooled_redis
    stats, keyspace = CacheStats(), KeySpace(namespace)
    core = wiring.cache_core(redis_client, keyspace, stats, redis_timeout_s=2.0)
    cache = core.cache
    postgres = PostgresStore(pool)
    # As app.py wires it: experiments are read from PostgreSQL through the cache.
    lookup = experiment_lookup(
        cache,
        postgres.get_experiment,
        CachePolicy(DataType.DATA_TYPE_EXPERIMENT, fresh_ttl=86_400, xfetch_beta=0.0),
    )
    # Opens nothing until its first insert, which the closed port refuses.
    unreachable = await open_clickhouse(f"http://127.0.0.1:{closed_port()}")
    holder: list[Rig] = []

    async def insert(events: Sequence[Event]) -> None:
        await holder[0].inserts_to.insert_events(events)

    batcher: EventBatcher[Event] = EventBatcher(insert, max_batch=5000, max_delay_ms=15)
    processor = wiring.clickhouse_processor(
        core, store, batcher, policies=policies(), experiments=lookup
    )
    rig = Rig(processor, store, batcher, cache, stats, postgres, unreachable, store)
    holder.append(rig)
    yield rig
    await processor.aclose()
    await batcher.aclose()
    await cache.aclose()
    await unreachable.close()


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def event(
    exp_id: str,
    *,
    variant: str = "control",
    user: str = "u1",
    event_type: str = "click",
    value: float = 1.0,
    at: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    e = Event(
        event_id=event_id or uuid.uuid4().hex,
        experiment_id=exp_id,
        user_id=user,
        variant=variant,
        event_type=event_type,
        value=value,
    )
    e.timestamp.FromDatetime(at or datetime.now(UTC))
    return e


async def track(rig: Rig, events: Sequence[Event]) -> TrackEventsResult:
    result = await rig.processor.track_events(rs.TrackEventsOperation(events=events))
    assert isinstance(result.value, TrackEventsResult)
    return result.value


async def metrics(rig: Rig, exp_id: str, variant: str, metric: str, hour: datetime):  # type: ignore[no-untyped-def]
    op = rs.GetEventMetricsOperation(experiment_id=exp_id, variant=variant, metric=metric)
    op.hour.FromDatetime(hour)
    result = await rig.processor.get_event_metrics(op)
    assert isinstance(result.value, EventMetrics)
    return result


async def test_migrations_are_idempotent(store: ClickHouseStore) -> None:
    assert await store.run(apply_clickhouse_migrations) == []


async def test_same_event_sent_50_times_at_once_is_stored_once(rig: Rig) -> None:
    """One copy is STORED; the others are DUPLICATE once it is stored, or
    UNAVAILABLE EVENTS_IN_FLIGHT while it is being stored (never DUPLICATE
    before: that insert could still fail)."""
    exp = await rig.add_experiment()
    e = event(exp)
    results = await asyncio.gather(*(track(rig, [e]) for _ in range(50)), return_exceptions=True)
    statuses = [r.outcomes[0].status for r in results if isinstance(r, TrackEventsResult)]
    in_flight = [r for r in results if isinstance(r, errors.Unavailable)]
    assert all(r.reason == "EVENTS_IN_FLIGHT" for r in in_flight), in_flight
    assert statuses.count(STORED) == 1
    assert statuses.count(DUPLICATE) + len(in_flight) == 49
    assert await rig.store.count_events(exp) == 1
    assert rig.stats.snapshot().dedup_hits == statuses.count(DUPLICATE)
    assert (await track(rig, [e])).outcomes[0].status == DUPLICATE  # the retry, later


async def test_repeats_within_one_request_are_duplicates(rig: Rig) -> None:
    exp = await rig.add_experiment()
    a, b = event(exp), event(exp)
    result = await track(rig, [a, b, a, a])
    assert [o.status for o in result.outcomes] == [STORED, STORED, DUPLICATE, DUPLICATE]
    assert (result.stored, result.duplicates) == (2, 2)
    again = await rig.processor.track_events(rs.TrackEventsOperation(events=[a, b]))
    assert again.status == DUPLICATE
    assert await rig.store.count_events(exp) == 2


async def test_group_commit_many_tracks_few_inserts_nothing_lost(rig: Rig) -> None:
    exp = await rig.add_experiment()
    inserts = rig.store.inserts
    results = await asyncio.gather(*(track(rig, [event(exp, user=f"u{i}")]) for i in range(200)))
    assert all(r.stored == 1 for r in results)
    made = rig.store.inserts - inserts
    assert 1 <= made <= 10, made
    assert await rig.store.count_events(exp) == 200


async def test_failed_insert_is_reported_and_events_can_be_retried(rig: Rig) -> None:
    exp = await rig.add_experiment()
    batch = [event(exp, user=f"u{i}") for i in range(5)]
    rig.clickhouse_down()
    outcomes = await asyncio.gather(
        track(rig, batch[:3]), track(rig, batch[3:]), return_exceptions=True
    )
    assert all(isinstance(o, errors.Unavailable) for o in outcomes), outcomes
    assert all(o.metadata["store"] == "clickhouse" for o in outcomes), outcomes
    assert await rig.store.count_events(exp) == 0
    rig.clickhouse_up()
    retried = await track(rig, batch)  # markers were released: accepted, not DUPLICATE
    assert retried.stored == 5
    assert await rig.store.count_events(exp) == 5


async def test_open_hour_metrics_equal_a_direct_clickhouse_count(rig: Rig) -> None:
    exp = await rig.add_experiment()
    now = datetime.now(UTC)
    hour = hour_of(now)
    at = max(hour, now - timedelta(seconds=1))
    events = [
        event(exp, user=f"u{i % 7}", event_type="revenue", value=1.5 * i, at=at) for i in range(40)
    ]
    events.append(event(exp, variant="treatment", event_type="revenue", at=at))
    await asyncio.gather(*(track(rig, events[i : i + 10]) for i in range(0, 41, 10)))
    await rig.batcher.flush()
    direct = await rig.store.hour_metrics(exp, "control", "revenue", hour)
    result = await metrics(rig, exp, "control", "revenue", hour)
    assert result.status == FRESH
    assert result.cache_key == f"metrics:{exp}:control:revenue:{hour:%Y%m%d%H}"
    got = result.value
    assert (got.count, got.unique_users, got.hour_closed) == (40, 7, False)
    assert (got.count, got.unique_users) == (direct.count, direct.unique_users)
    assert got.sum == pytest.approx(direct.sum) == pytest.approx(1.5 * sum(range(40)))


async def test_closed_hour_is_cached_and_a_late_event_invalidates_it(rig: Rig) -> None:
    exp = await rig.add_experiment()
    hour = hour_of(datetime.now(UTC)) - timedelta(hours=3)
    await track(rig, [event(exp, user=f"u{i}", at=hour + timedelta(minutes=i)) for i in range(6)])
    queries = rig.store.queries
    first = await metrics(rig, exp, "control", "click", hour)
    assert (first.status, first.value.count, first.value.hour_closed) == (FRESH, 6, True)
    second = await metrics(rig, exp, "control", "click", hour)
    assert (second.status, second.value.count) == (CACHED, 6)
    assert rig.store.queries - queries == 1
    await track(rig, [event(exp, user="late", at=hour + timedelta(minutes=59))])
    third = await metrics(rig, exp, "control", "click", hour)
    assert (third.status, third.value.count, third.value.unique_users) == (FRESH, 7, 7)


async def test_metrics_of_unknown_experiment_is_not_found(rig: Rig) -> None:
    with pytest.raises(errors.NotFound):
        await metrics(
            rig, "nope-" + uuid.uuid4().hex[:6], "control", "click", hour_of(datetime.now(UTC))
        )


async def test_analytics_against_a_hand_computed_fixture(rig: Rig) -> None:
    exp = await rig.add_experiment(("control", "treatment", "empty"))
    day = hour_of(datetime.now(UTC)).replace(hour=0) - timedelta(days=1)
    noon = day + timedelta(hours=12)
    events: list[Event] = []
    # control: 20 exposed users (two exposures each), 4 convert with value 10.
    for i in range(20):
        events.append(event(exp, user=f"c{i}", event_type="exposure", at=noon))
        events.append(event(exp, user=f"c{i}", event_type="exposure", at=noon))
    events += [
        event(exp, user=f"c{i}", event_type=CONVERSION_EVENT_TYPE, value=10, at=noon)
        for i in range(4)
    ]
    # treatment: 25 exposed, 10 convert with value 5.
    events += [
        event(exp, variant="treatment", user=f"t{i}", event_type="exposure", at=noon)
        for i in range(25)
    ]
    events += [
        event(
            exp,
            variant="treatment",
            user=f"t{i}",
            event_type=CONVERSION_EVENT_TYPE,
            value=5,
            at=noon,
        )
        for i in range(10)
    ]
    # Outside the day: must not count.
    events.append(
        event(exp, user="x", event_type=CONVERSION_EVENT_TYPE, at=day - timedelta(seconds=1))
    )
    events.append(
        event(exp, user="y", event_type=CONVERSION_EVENT_TYPE, at=day + timedelta(days=1))
    )
    await track(rig, events)

    op = rs.GetAnalyticsOperation(experiment_id=exp)
    op.day.FromDatetime(day)
    result = await rig.processor.get_analytics(op)
    assert (result.status, result.cache_key) == (FRESH, f"analytics:{exp}:{day:%Y%m%d}")
    report = result.value
    assert isinstance(report, Analytics)
    assert report.control_variant == "control"
    control, treatment, empty = report.variants
    assert (control.variant, control.is_control, control.exposed_users) == ("control", True, 20)
    assert (control.converting_users, control.conversion_rate) == (4, pytest.approx(0.2))
    assert (control.total_value, control.mean_value) == (pytest.approx(40.0), pytest.approx(2.0))
    assert (control.relative_lift, control.p_value) == (0.0, 1.0)
    assert (treatment.exposed_users, treatment.converting_users) == (25, 10)
    assert treatment.conversion_rate == pytest.approx(0.4, abs=1e-9)
    assert treatment.total_value == pytest.approx(50.0)
    assert treatment.mean_value == pytest.approx(2.0)
    # lift (0.4 - 0.2) / 0.2 = 1; pooled 14/45, SE = sqrt(14/45 * 31/45 * (1/25 + 1/20))
    # = 0.13888444, z = 1.44004608, p = 2 (1 - Phi(z)) = 0.14985436;
    # unpooled SE = sqrt(0.4*0.6/25 + 0.2*0.8/20) = sqrt(0.0176), CI = 0.2 -/+ 0.26001861.
    assert treatment.relative_lift == pytest.approx(1.0, abs=1e-6)
    assert treatment.p_value == pytest.approx(0.14985436192502, abs=1e-6)
    assert treatment.ci_low == pytest.approx(-0.06001860557317, abs=1e-6)
    assert treatment.ci_high == pytest.approx(0.46001860557317, abs=1e-6)
    assert (empty.exposed_users, empty.conversion_rate, empty.p_value) == (0, 0.0, 1.0)
    # No NaN on the wire (JSON would show the string "NaN"): flags instead.
    assert (empty.relative_lift, empty.ci_low, empty.ci_high) == (0.0, 0.0, 0.0)
    assert empty.relative_lift_undefined and empty.confidence_interval_undefined
    assert not treatment.relative_lift_undefined
    assert not treatment.confidence_interval_undefined

    queries = rig.store.queries
    again = await rig.processor.get_analytics(op)
    assert again.status == CACHED and again.value == report
    assert rig.store.queries == queries


async def test_unknown_experiment_or_variant_is_invalid_argument(rig: Rig) -> None:
    exp = await rig.add_experiment()
    good = event(exp)
    with pytest.raises(errors.InvalidArgument) as caught:
        await track(rig, [good, event("missing-exp"), event(exp, variant="nope")])
    fields = [v.field for v in caught.value.violations]
    assert fields == ["track_events.events[1].experiment_id", "track_events.events[2].variant"]
    assert await rig.store.count_events(exp) == 0  # nothing of a bad request is stored
    assert (await track(rig, [good])).stored == 1  # and nothing was marked as seen


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.timestamp.FromDatetime(datetime(1999, 12, 31, tzinfo=UTC)), "timestamp"),
        (lambda e: e.timestamp.FromDatetime(datetime.now(UTC) + timedelta(hours=2)), "timestamp"),
        (lambda e: setattr(e, "value", math.nan), "value"),
        (lambda e: setattr(e, "event_id", "bad:id"), "event_id"),
    ],
)
def test_bad_event_fields_are_invalid_argument(mutate, field) -> None:  # type: ignore[no-untyped-def]
    e = event("exp-1")
    mutate(e)
    request = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[e]))
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_route_data(request)
    assert [v.field for v in caught.value.violations] == [f"track_events.events[0].{field}"]


def test_oversized_batch_is_invalid_argument() -> None:
    events = [event("exp-1") for _ in range(1001)]
    request = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=events))
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_route_data(request)
    assert caught.value.violations[0].field == "track_events.events"


async def test_shutdown_flushes_pending_events(store: ClickHouseStore) -> None:
    exp = f"e-{uuid.uuid4().hex[:10]}"
    batcher: EventBatcher[Event] = EventBatcher(store.insert_events, max_delay_ms=60_000)
    async with asyncio.TaskGroup() as group:
        adding = group.create_task(batcher.add([event(exp) for _ in range(3)]))
        await eventually(lambda: batcher.pending == 3, "three events waiting in the batcher")
        assert not adding.done()  # acknowledged only once written
        assert await store.count_events(exp) == 0
        await batcher.aclose()
    assert await store.count_events(exp) == 3


async def test_replacing_merge_tree_collapses_a_resent_event(store: ClickHouseStore) -> None:
    exp = f"e-{uuid.uuid4().hex[:10]}"
    e = event(exp)
    await store.insert_events([e])
    await store.insert_events([e])  # e.g. a retry after a timeout that had landed
    assert await store.count_events(exp) == 1
    hour = hour_of(e.timestamp.ToDatetime(tzinfo=UTC))
    assert (await store.hour_metrics(exp, "control", "click", hour)).count == 1
