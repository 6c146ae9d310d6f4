"""The contract as a Python client sees it: a grpc.aio channel and the generated stub."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mcprouter.server.keys import KeySpace
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests import backends
from tests.e2e.conftest import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

SMALL_LIMIT = 65_536
DOMAIN = "mcprouter.v1"
T = TypeVar("T", bound=Message)


@pytest.fixture
async def stub(server_target: str) -> AsyncIterator[rs_grpc.RouterServiceStub]:
    async with grpc.aio.insecure_channel(server_target) as channel:
        yield rs_grpc.RouterServiceStub(channel)


@pytest.fixture
async def server_redis(e2e_server: ServerProcess) -> AsyncIterator[aioredis.Redis]:
    """A client of the Redis the shared server uses (keys are written raw, prefixed)."""
    client = aioredis.Redis.from_url(e2e_server.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def small_server(launch_server: Launcher) -> Iterator[ServerProcess]:
    """A second server that accepts messages of at most 64 KiB."""
    with launch_server("small", MAX_MESSAGE_BYTES=SMALL_LIMIT) as server:
        yield server


def details_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` a rich error carries (grpc-status-details-bin)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich details in {error!r}"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    return status


def unpack(status: status_pb2.Status, kind: type[T]) -> T:
    """The single detail of type ``kind``."""
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    assert len(found) == 1, f"expected one {kind.__name__} in {status}"
    return found[0]


async def stats(stub: rs_grpc.RouterServiceStub) -> rs.StatsResponse:
    return await stub.Stats(rs.StatsRequest(), timeout=5)


async def test_invalid_argument_carries_bad_request_and_error_info(
    stub: rs_grpc.RouterServiceStub,
) -> None:
    request = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id="bad id*"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RouteData(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = details_of(caught.value)
    info = unpack(status, error_details_pb2.ErrorInfo)
    assert (info.domain, info.reason) == (DOMAIN, "INVALID_ID")
    bad = unpack(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["get_experiment.experiment_id"]
    assert bad.field_violations[0].description


async def test_every_bad_field_is_named(stub: rs_grpc.RouterServiceStub) -> None:
    operation = rs.GetEventMetricsOperation(
        experiment_id="exp-e2e", variant="no spaces", metric="clicks"
    )
    operation.hour.FromDatetime(datetime(2026, 1, 1, 10, 30, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RouteData(rs.RouteDataRequest(get_event_metrics=operation), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = unpack(details_of(caught.value), error_details_pb2.BadRequest)
    assert {v.field for v in bad.field_violations} == {
        "get_event_metrics.variant",
        "get_event_metrics.hour",
    }


async def test_experiment_events_and_metrics_flow(stub: rs_grpc.RouterServiceStub) -> None:
    """Write an experiment, read it twice, track an event twice, read its hour."""
    exp_id = f"e2e-{uuid.uuid4().hex[:8]}"
    experiment = Experiment(
        experiment_id=exp_id,
        name="flow",
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
    )
    stored = await stub.RouteData(
        rs.RouteDataRequest(upsert_experiment=rs.UpsertExperimentOperation(experiment=experiment))
    )
    assert stored.status == ServeStatus.SERVE_STATUS_STORED
    read = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id=exp_id))
    assert (await stub.RouteData(read)).status == ServeStatus.SERVE_STATUS_FRESH
    assert (await stub.RouteData(read)).status == ServeStatus.SERVE_STATUS_CACHED

    now = datetime.now(UTC)
    event = Event(
        event_id=f"ev-{uuid.uuid4().hex[:8]}",
        experiment_id=exp_id,
        user_id="u1",
        variant="treatment",
        event_type="conversion",
        value=2.5,
    )
    event.timestamp.FromDatetime(now)
    track = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[event]))
    first, again = await stub.RouteData(track), await stub.RouteData(track)
    assert first.track_events_result.outcomes[0].status == ServeStatus.SERVE_STATUS_STORED
    assert again.track_events_result.outcomes[0].status == ServeStatus.SERVE_STATUS_DUPLICATE

    metrics = rs.GetEventMetricsOperation(
        experiment_id=exp_id, variant="treatment", metric="conversion"
    )
    metrics.hour.FromDatetime(now.replace(minute=0, second=0, microsecond=0))
    answer = await stub.RouteData(rs.RouteDataRequest(get_event_metrics=metrics))
    assert (answer.event_metrics.count, answer.event_metrics.sum) == (1, 2.5)

    missing = rs.GetAnalyticsOperation(experiment_id=f"nope-{uuid.uuid4().hex[:8]}")
    missing.day.FromDatetime(now.replace(hour=0, minute=0, second=0, microsecond=0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RouteData(rs.RouteDataRequest(get_analytics=missing), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert unpack(details_of(caught.value), error_details_pb2.ErrorInfo).domain == DOMAIN


def big_get_cached() -> rs.GetCachedRequest:
    """A valid GetCached request of about 80 KB (200 keys of 411 characters), ids of its own."""
    token = uuid.uuid4().hex[:12]
    filler = "a" * (397 - len(token))
    request = rs.GetCachedRequest(keys=[f"experiment:{token}{i:03d}{filler}" for i in range(200)])
    assert {len(key) for key in request.keys} == {411}
    assert SMALL_LIMIT < request.ByteSize() < 4 * 1024 * 1024
    return request


async def test_request_over_max_message_bytes_is_resource_exhausted(
    small_server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(small_server.target) as channel:
        small_stub = rs_grpc.RouterServiceStub(channel)
        fits = await small_stub.GetCached(
            rs.GetCachedRequest(keys=[f"experiment:e2e-{uuid.uuid4().hex[:8]}"]), timeout=5
        )
        assert fits.misses == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await small_stub.GetCached(big_get_cached(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_same_large_request_is_fine_under_the_default_limit(
    stub: rs_grpc.RouterServiceStub,
) -> None:
    answer = await stub.GetCached(big_get_cached(), timeout=5)
    assert (answer.hits, answer.misses) == (0, 200)


async def test_cache_entries_written_to_redis_are_read_and_invalidated(
    stub: rs_grpc.RouterServiceStub, server_redis: aioredis.Redis, e2e_server: ServerProcess
) -> None:
    ns = e2e_server.namespace
    exp_id = f"exp-e2e-{uuid.uuid4().hex[:8]}"  # the shared server: ids of this test alone
    metric_keys = [f"metrics:{exp_id}:control:clicks:20260101{hour:02d}" for hour in range(5)]
    for key in metric_keys:
        await server_redis.set(KeySpace(ns).redis_key(key), b"raw bytes, not an envelope", ex=3600)
    experiment = Experiment(
        experiment_id=exp_id,
        name="E2E",
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
        version=3,
    )
    stored_at = datetime.now(UTC).replace(microsecond=0)
    envelope = CacheEnvelope(
        data_type=DataType.DATA_TYPE_EXPERIMENT,
        schema_version=1,
        payload=experiment.SerializeToString(),
    )
    envelope.stored_at.FromDatetime(stored_at)
    envelope.fresh_until.FromDatetime(stored_at + timedelta(hours=1))
    await server_redis.set(
        KeySpace(ns).redis_key(f"experiment:{exp_id}"), envelope.SerializeToString(), ex=3600
    )
    before = await stats(stub)

    cached = await stub.GetCached(
        rs.GetCachedRequest(
            keys=[f"experiment:{exp_id}", metric_keys[0], f"experiment:{exp_id}-absent"]
        ),
        timeout=5,
    )
    assert (cached.hits, cached.misses) == (2, 1), cached
    exp_entry, metric_entry, missing = cached.entries
    assert exp_entry.key == f"experiment:{exp_id}"
    assert exp_entry.hit and exp_entry.fresh and not exp_entry.not_found
    assert exp_entry.data_type == DataType.DATA_TYPE_EXPERIMENT
    assert exp_entry.WhichOneof("value") == "experiment"
    assert exp_entry.experiment == experiment
    assert exp_entry.stored_at.ToDatetime(tzinfo=UTC) == stored_at
    assert exp_entry.HasField("ttl_remaining")
    assert timedelta(0) < exp_entry.ttl_remaining.ToTimedelta() <= timedelta(hours=1)
    # Raw bytes are a hit of a known family, but not a decodable value.
    assert metric_entry.hit and metric_entry.data_type == DataType.DATA_TYPE_EVENT_METRICS
    assert metric_entry.WhichOneof("value") is None
    assert not missing.hit and not missing.HasField("ttl_remaining")

    by_pattern = await stub.Invalidate(
        rs.InvalidateRequest(pattern=f"metrics:{exp_id}:*"), timeout=5
    )
    assert by_pattern.removed == len(metric_keys)
    space = KeySpace(ns)
    assert await server_redis.exists(*(space.redis_key(k) for k in metric_keys)) == 0
    assert await server_redis.exists(space.redis_key(f"experiment:{exp_id}")) == 1

    by_entity = await stub.Invalidate(rs.InvalidateRequest(experiment_id=exp_id), timeout=5)
    assert by_entity.removed == 1
    assert await server_redis.exists(space.redis_key(f"experiment:{exp_id}")) == 0
    gone = await stub.GetCached(rs.GetCachedRequest(keys=[f"experiment:{exp_id}"]), timeout=5)
    assert (gone.hits, gone.misses) == (0, 1)

    # Counters of a server other tests share: they grew by at least what this
    # test did (the exact counts are the ``removed`` answers above).
    after = await stats(stub)
    assert after.invalidations - before.invalidations >= len(metric_keys) + 1
    assert after.total_operations - before.total_operations >= 4
    assert after.redis_available


async def test_invalidate_stays_inside_the_server_namespace(
    stub: rs_grpc.RouterServiceStub, server_redis: aioredis.Redis
) -> None:
    """Keys of another namespace, or of none, survive a matching pattern."""
    experiment_id = f"exp-e2e-ns-{uuid.uuid4().hex[:8]}"
    key = f"metrics:{experiment_id}:control:clicks:2026010100"
    neighbours = [backends.unique_namespace() + key, key]
    for neighbour in neighbours:
        await server_redis.set(neighbour, b"x", ex=600)
    try:
        answer = await stub.Invalidate(
            rs.InvalidateRequest(pattern=f"metrics:{experiment_id}:*"), timeout=5
        )
        assert answer.removed == 0
        assert await server_redis.exists(*neighbours) == len(neighbours)
    finally:
        await server_redis.unlink(*neighbours)
