"""Observability: Prometheus metrics, structured logs with request ids, optional tracing.

``open_observability`` builds what the server needs from the settings and
the running ``App``: the telemetry layer (always: request ids and the
access log), the ``/metrics`` endpoint when ``METRICS_ADDRESS`` is set, and
OpenTelemetry tracing when ``OTEL_ENABLED`` is true. Logging itself is set up
by the CLI (``logs.configure_logging``) before anything runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

from mcprouter.server.app import App
from mcprouter.server.config import Settings
from mcprouter.server.edge.wrapping import Layer
from mcprouter.server.observability.exporter import MetricsEndpoint
from mcprouter.server.observability.metrics import RpcMetrics, ServerCollector
from mcprouter.server.observability.runtime_metrics import RuntimeCollector
from mcprouter.server.observability.settings import parse_address
from mcprouter.server.observability.telemetry import Telemetry
from mcprouter.server.observability.tracing import Tracing, start_tracing
from mcprouter.v1 import router_service_pb2 as rs

__all__ = ["Observability", "open_observability"]


@dataclass(frozen=True)
class Observability:
    """What the server wires in: its outermost layers, and where metrics are served."""

    layers: tuple[Layer, ...]
    registry: CollectorRegistry | None
    metrics_port: int | None


def declare_router_methods(metrics: RpcMetrics) -> None:
    """Create every RouterService method's series (RouteData: per operation) at start-up."""
    service = rs.DESCRIPTOR.services_by_name["RouterService"]
    operations = [f.name for f in rs.RouteDataRequest.DESCRIPTOR.oneofs_by_name["operation"].fields]
    for method in service.methods:
        metrics.declare(
            service.full_name, method.name, operations if method.name == "RouteData" else ("",)
        )


@asynccontextmanager
async def open_observability(
    settings: Settings,
    app: App,
    *,
    backends: Mapping[str, int] | None = None,
    metrics_socket: Path | None = None,
) -> AsyncIterator[Observability]:
    """Start the metrics endpoint and tracing as configured; stop them on exit.

    Args:
        settings: The server's settings.
        app: The running app, whose counters the metrics read.
        backends: Backend name → health status, kept current by the health monitor.
        metrics_socket: Serve the metrics on this Unix socket (a worker of
            ``serve --workers N``, whose supervisor serves ``METRICS_ADDRESS``).
    """
    async with AsyncExitStack() as stack:
        registry: CollectorRegistry | None = None
        rpc_metrics: RpcMetrics | None = None
        port: int | None = None
        if settings.metrics_address or metrics_socket is not None:
            host, wanted = (None, 0) if metrics_socket else parse_address(settings.metrics_address)
            # A `_created` series per counter doubles the series count for
            # nothing a dashboard uses (process-global switch).
            disable_created_metrics()  # type: ignore[no-untyped-call]
            registry = CollectorRegistry(auto_describe=True)
            rpc_metrics = RpcMetrics(registry)
            declare_router_methods(rpc_metrics)
            registry.register(
                ServerCollector(
                    app.stats, app.cache.breaker, backends=backends, inserts=app.clickhouse
                )
            )
            registry.register(RuntimeCollector(app))
            ProcessCollector(registry=registry)  # CPU, memory, open files of this process
            endpoint = MetricsEndpoint(registry, host, wanted, path=metrics_socket)
            port = await endpoint.start()
            stack.push_async_callback(endpoint.aclose)
        tracing: Tracing | None = start_tracing() if settings.otel_enabled else None
        if tracing is not None:
            stack.callback(tracing.shutdown)
        yield Observability(
            layers=(Telemetry(rpc_metrics, tracing, access_log=settings.access_log),),
            registry=registry,
            metrics_port=port,
        )
