"""A real server on a real Redis Cluster (3 primaries, 3 replicas): ``redis+cluster://``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.cluster import LocalCluster, local_cluster
from tests.e2e.conftest import running_server
from tests.faults.harness import experiment_request, get_experiment

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


async def test_the_service_runs_on_a_redis_cluster(
    cluster: LocalCluster, postgres_dsn: str, tmp_path: Path
) -> None:
    url = cluster.url.replace("redis://", "redis+cluster://")
    with running_server(
        tmp_path / "server", redis_url=url, postgres_dsn=postgres_dsn, clean_redis=False
    ) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            ids = [f"cl-{uuid.uuid4().hex[:8]}" for _ in range(6)]
            for exp_id in ids:
                await stub.RouteData(experiment_request(exp_id), timeout=10)
            first = [await stub.RouteData(get_experiment(e), timeout=10) for e in ids]
            second = [await stub.RouteData(get_experiment(e), timeout=10) for e in ids]
            assert {r.status for r in first} == {ServeStatus.SERVE_STATUS_FRESH}
            assert {r.status for r in second} == {ServeStatus.SERVE_STATUS_CACHED}

            event = Event(
                event_id=uuid.uuid4().hex,
                experiment_id=ids[0],
                user_id="u1",
                variant="control",
                event_type="click",
                value=1.0,
            )
            event.timestamp.FromDatetime(datetime.now(UTC))
            track = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[event]))
            assert (
                await stub.RouteData(track, timeout=10)
            ).status == ServeStatus.SERVE_STATUS_STORED
            again = await stub.RouteData(track, timeout=10)
            assert again.status == ServeStatus.SERVE_STATUS_DUPLICATE

            cached = await stub.GetCached(
                rs.GetCachedRequest(keys=[f"experiment:{e}" for e in ids]), timeout=10
            )
            assert cached.hits == len(ids)
            removed = await stub.Invalidate(
                rs.InvalidateRequest(pattern="experiment:cl-*"), timeout=10
            )
            assert removed.removed >= len(ids)
            stats = await stub.Stats(rs.StatsRequest(), timeout=10)
            assert stats.redis_available and stats.redis_key_count > 0
