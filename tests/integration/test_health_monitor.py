"""Health reflects each backend: a backend that goes away turns NOT_SERVING."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from mcprouter.server.edge.health import NOT_SERVING, ROUTER_SERVICE, SERVING, HealthMonitor
from mcprouter.server.redis.connection import create_redis
from tests import backends


async def status_of(servicer: health_aio.HealthServicer, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    response = await servicer.Check(request, None)
    return int(response.status)


async def test_backend_status_follows_the_backend(tmp_path: Path) -> None:
    servicer = health_aio.HealthServicer()
    with backends.restartable_valkey(tmp_path) as valkey:
        client = create_redis(valkey.url, pool_size=2, timeout_s=0.2, pool_timeout_s=0.2)
        monitor = HealthMonitor(servicer, {"redis": client.ping}, interval_s=60, timeout_s=0.5)
        try:
            await monitor.start()
            assert await status_of(servicer, "redis") == SERVING
            assert await status_of(servicer, "") == SERVING

            valkey.stop()
            await monitor.probe_once()
            assert await status_of(servicer, "redis") == NOT_SERVING
            # The service itself keeps serving: reads fail open to the stores.
            assert await status_of(servicer, ROUTER_SERVICE) == SERVING

            valkey.restart()
            await monitor.probe_once()
            assert await status_of(servicer, "redis") == SERVING
        finally:
            await monitor.shutdown()
            await client.aclose()
    assert await status_of(servicer, "") == NOT_SERVING
