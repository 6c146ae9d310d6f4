"""A server whose ClickHouse is down: it starts, says so by name, answers UNAVAILABLE, recovers.

Path 7 of the consistency issue (ClickHouse part). There is no ClickHouse
server binary on this machine, so the outage at start-up is an HTTP URL to a
port nothing listens on (the driver's real failure), and recovery is shown
with the embedded engine whose data folder cannot be created at first (a file
is in the way) and can be once the file is gone: the same lazy
connect-and-retry path that an HTTP server coming up would take.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.e2e.conftest import (
    NOT_SERVING,
    SERVING,
    Launcher,
    free_port,
    health_status,
    wait_for,
)

pytestmark = pytest.mark.e2e

FLIP_TIMEOUT_S = 20.0


def create_experiment(stub: rs_grpc.RouterServiceStub) -> str:
    exp_id = f"ch-{uuid.uuid4().hex[:10]}"
    experiment = Experiment(
        experiment_id=exp_id,
        name="outage",
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
    )
    stub.RouteData(
        rs.RouteDataRequest(upsert_experiment=rs.UpsertExperimentOperation(experiment=experiment)),
        timeout=10,
    )
    return exp_id


def track(stub: rs_grpc.RouterServiceStub, exp_id: str) -> rs.RouteDataResponse:
    e = Event(
        event_id=uuid.uuid4().hex,
        experiment_id=exp_id,
        user_id="u1",
        variant="control",
        event_type="click",
    )
    e.timestamp.FromDatetime(datetime.now(UTC))
    request = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[e]))
    response: rs.RouteDataResponse = stub.RouteData(request, timeout=10)
    return response


def error_reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return error.code(), info.reason, dict(info.metadata)  # type: ignore[attr-defined]
    raise AssertionError(f"no ErrorInfo in {status}")


def test_path7_the_service_starts_with_an_http_clickhouse_down_and_names_it(
    launch_server: Launcher,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        launch_server("clickhouse-down", CLICKHOUSE_URL=url) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        assert wait_for(
            lambda: health_status(server.target, "clickhouse") == NOT_SERVING,
            timeout_s=FLIP_TIMEOUT_S,
        ), server.log()
        assert health_status(server.target, "") == SERVING
        assert health_status(server.target, "postgres") == SERVING
        stub = rs_grpc.RouterServiceStub(channel)
        exp_id = create_experiment(stub)  # PostgreSQL still serves
        with pytest.raises(grpc.RpcError) as caught:
            track(stub, exp_id)
        code, _reason, metadata = error_reason(caught.value)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert metadata.get("store") == "clickhouse"
        analytics = rs.GetAnalyticsOperation(experiment_id=exp_id)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        analytics.day.FromDatetime(today)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RouteData(rs.RouteDataRequest(get_analytics=analytics), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_path7_clickhouse_recovers_by_itself(launch_server: Launcher, tmp_path: Path) -> None:
    blocker = tmp_path / "not-yet"
    blocker.write_text("a file where the engine's folder must go")
    url = f"chdb://{blocker / 'clickhouse'}"
    with (
        launch_server("clickhouse-late", CLICKHOUSE_URL=url) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        assert wait_for(
            lambda: health_status(server.target, "clickhouse") == NOT_SERVING,
            timeout_s=FLIP_TIMEOUT_S,
        ), server.log()
        stub = rs_grpc.RouterServiceStub(channel)
        exp_id = create_experiment(stub)
        with pytest.raises(grpc.RpcError) as caught:
            track(stub, exp_id)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        blocker.unlink()  # ClickHouse "comes up": its folder can now be created
        assert wait_for(
            lambda: health_status(server.target, "clickhouse") == SERVING,
            timeout_s=FLIP_TIMEOUT_S,
        ), server.log()
        response = track(stub, exp_id)
        assert response.track_events_result.outcomes[0].status == ServeStatus.SERVE_STATUS_STORED
