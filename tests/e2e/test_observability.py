"""A served process's telemetry: request ids, JSON logs, the /metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.e2e.conftest import Launcher, free_port

pytestmark = pytest.mark.e2e


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def test_request_id_json_logs_and_metrics(launch_server: Launcher) -> None:
    metrics_port = free_port()
    with launch_server(
        "observed", METRICS_ADDRESS=f"127.0.0.1:{metrics_port}", LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
    ) as server:  # fmt: skip
        experiment_id = f"obs-{uuid.uuid4().hex[:8]}"
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            request = rs.RouteDataRequest(
                get_experiment=rs.GetExperimentOperation(experiment_id=experiment_id)
            )
            call = stub.RouteData(request, timeout=5, metadata=[("x-request-id", "trace-me-1")])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            echoed = dict(await call.trailing_metadata())
            assert echoed["x-request-id"] == "trace-me-1"
            stats_call = stub.Stats(rs.StatsRequest(), timeout=5)
            await stats_call
            generated = dict(await stats_call.trailing_metadata())["x-request-id"]
            assert generated and generated != "trace-me-1"
        text = await asyncio.to_thread(scrape, metrics_port)
        log = server.log()
    assert (
        'mcprouter_rpc_requests_total{grpc_code="NOT_FOUND",grpc_method="RouteData",'
        'grpc_service="mcprouter.v1.RouterService",operation="get_experiment"} 1.0'
    ) in text
    assert 'mcprouter_redis_breaker_state{state="closed"} 1.0' in text
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines, log
    ours = [line for line in lines if line["request_id"] == "trace-me-1"]
    assert any(line.get("code") == "NOT_FOUND" for line in ours), ours
    assert all({"ts", "level", "logger", "msg", "request_id"} <= line.keys() for line in lines)


async def test_series_exist_from_start_up_without_created(launch_server: Launcher) -> None:
    metrics_port = free_port()
    with launch_server("series", METRICS_ADDRESS=f"127.0.0.1:{metrics_port}") as server:
        before = await asyncio.to_thread(scrape, metrics_port)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            request = rs.RouteDataRequest(
                get_experiment=rs.GetExperimentOperation(experiment_id="series-none")
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.RouteData(request, timeout=5)
        after = await asyncio.to_thread(scrape, metrics_port)
    assert "_created" not in before
    for data_type in ("experiment", "assignment", "user_profile", "event_metrics", "analytics",
                      "search"):  # fmt: skip
        assert (
            f'mcprouter_cache_outcomes_total{{data_type="{data_type}",outcome="hits"}} 0.0'
            in before
        )
    for line in (
        'mcprouter_rpc_requests_total{grpc_code="OK",grpc_method="RouteData",'
        'grpc_service="mcprouter.v1.RouterService",operation="semantic_search"} 0.0',
        'mcprouter_store_duration_seconds_count{operation="query",store="chroma"} 0.0',
        'mcprouter_store_errors_total{operation="insert_events",store="clickhouse"} 0.0',
        "mcprouter_ingest_pending_events 0.0",
        "mcprouter_ingest_pending_limit 100000.0",
        'mcprouter_db_pool_max_connections{store="postgres"} 10.0',
        "mcprouter_cache_l1_feed_connected 1.0",
    ):
        assert line in before, line
    assert 'mcprouter_db_pool_connections{state="in_use",store="postgres"}' in before
    assert "mcprouter_build_info{" in before
    assert (
        'mcprouter_store_duration_seconds_count{operation="get_experiment",store="postgres"} 1.0'
        in after
    )
