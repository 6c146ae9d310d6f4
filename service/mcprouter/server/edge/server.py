"""The gRPC server: services, reflection, health, limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mcprouter.server.app import App, open_app
from mcprouter.server.config import Settings
from mcprouter.server.edge.auth import BearerAuth
from mcprouter.server.edge.deadlines import DEADLINES
from mcprouter.server.edge.health import HealthMonitor, HealthService
from mcprouter.server.edge.inflight import InFlightLimiter
from mcprouter.server.edge.reflection import DocumentedReflectionServicer, documented_files
from mcprouter.server.edge.security import SecurityConfig, add_port
from mcprouter.server.edge.servicer import RouterServicer
from mcprouter.server.edge.status import ERROR_TRANSLATION
from mcprouter.server.edge.wrapping import Layer, Services
from mcprouter.server.observability import open_observability
from mcprouter.server.workers.role import WorkerRole
from mcprouter.v1 import router_service_pb2, router_service_pb2_grpc

log = logging.getLogger(__name__)

# A probe that takes longer than this counts as a failure.
PROBE_TIMEOUT_S = 1.0


def layers(security: SecurityConfig) -> list[Layer]:
    """The per-call layers, outermost first.

    Authentication refuses before anything else runs (an unauthenticated
    flood cannot take in-flight slots); the in-flight bound comes next;
    errors are translated once; the deadline is recorded innermost, so a
    store timeout after it becomes DEADLINE_EXCEEDED, not INTERNAL.
    """
    chain: list[Layer] = []
    if security.auth_tokens:
        chain.append(BearerAuth(security.auth_tokens, security.auth_exempt_methods))
    chain += [InFlightLimiter(security.max_in_flight_rpcs), ERROR_TRANSLATION, DEADLINES]
    return chain


def build_server(
    app: App,
    health: health_aio.HealthServicer,
    security: SecurityConfig | None = None,
    *,
    telemetry: Sequence[Layer] = (),
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """A grpc.aio server with every service registered (not started, no port).

    ``security`` defaults to the one ``app.settings`` describes; listen with
    ``security.add_port`` so TLS applies. Every method runs through
    ``layers(security)`` (``edge/wrapping.py``: applied once, here, not per
    call); ``telemetry`` layers go outermost, so they see every call as the
    client does (refusals included).
    ``reuse_port`` lets the workers of ``serve --workers N`` share the port.
    """
    if security is None:
        security = SecurityConfig.from_settings(app.settings)
    limit = app.settings.max_message_bytes
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
    if reuse_port:  # explicit, as in grpc's multiprocessing example
        options.append(("grpc.so_reuseport", 1))
    if app.settings.max_connection_age_s > 0:
        # Clients reconnect (gRPC does it for them) and land anew: SO_REUSEPORT
        # places connections once, so this is what rebalances them.
        options += [
            ("grpc.max_connection_age_ms", round(app.settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(app.settings.shutdown_grace_s * 1000)),
        ]
    services = Services()
    router_service_pb2_grpc.add_RouterServiceServicer_to_server(
        RouterServicer(app.router, app.cache_ops, app.stats, app.fleet),
        services,  # type: ignore[arg-type]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, services)
    names = (
        router_service_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        DocumentedReflectionServicer(names, documented_files()), services
    )
    server = grpc.aio.server(options=options)
    services.install(server, [*telemetry, *layers(security)])
    return server


def health_only_server(
    health: health_aio.HealthServicer, *, reuse_port: bool = False
) -> grpc.aio.Server:
    """A server with the health service alone (``HEALTH_LISTEN_ADDRESS``).

    Plaintext on purpose: kubelet's gRPC probes speak neither TLS nor tokens.
    It exposes no data, only the statuses, and turns NOT_SERVING with the
    main port, so readiness follows the drain. Under ``serve --workers N``
    every worker listens on it (``reuse_port``): a probe reaches one of them,
    and all drain together.
    """
    options = [("grpc.max_receive_message_length", 4096)]
    if reuse_port:
        options.append(("grpc.so_reuseport", 1))
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[int], None] | None = None,
    worker: WorkerRole | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully.

    Shutdown order: health turns NOT_SERVING, and the server keeps serving
    for ``drain_delay_s`` so load balancers and health-checking clients move
    away before anything is refused; then it stops accepting and gives
    in-flight RPCs ``shutdown_grace_s``; then pools, pending follow-ups and
    embedded servers close (``open_app``'s exit).

    ``worker`` is set in a worker of ``serve --workers N``: its ports are
    shared with its siblings (SO_REUSEPORT) and its metrics go to the
    supervisor over a Unix socket (``workers/``).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_app(settings) as app, AsyncExitStack() as stack:
        health = HealthService()
        monitor = HealthMonitor(
            health,
            app.probes,
            interval_s=settings.health_probe_interval_s,
            timeout_s=PROBE_TIMEOUT_S,
        )
        security = SecurityConfig.from_settings(settings)
        observability = await stack.enter_async_context(
            open_observability(
                settings,
                app,
                backends=monitor.backend_status,
                metrics_socket=None if worker is None else worker.metrics_socket,
            )
        )
        shared = worker is not None
        server = build_server(
            app, health, security, telemetry=observability.layers, reuse_port=shared
        )
        port = add_port(server, settings.listen_address, security)
        if port == 0:
            raise RuntimeError(f"could not listen on {settings.listen_address}")
        health_only: grpc.aio.Server | None = None
        if settings.health_listen_address:
            health_only = health_only_server(health, reuse_port=shared)
            if health_only.add_insecure_port(settings.health_listen_address) == 0:
                raise RuntimeError(f"could not listen on {settings.health_listen_address}")
        try:
            # Probe first, so the first health answer a client gets is a real one.
            await monitor.start()
            if health_only is not None:
                await health_only.start()
            await server.start()
            log.info(
                "mcp-router %sserving on %s (port %d, %s, %s); operations: %s",
                "" if worker is None else f"worker {worker.index} (pid {os.getpid()}) ",
                settings.listen_address,
                port,
                "mutual TLS" if security.mutual_tls else "TLS" if security.tls else "plaintext",
                "bearer tokens" if security.auth_tokens else "no authentication",
                ", ".join(sorted(app.router.operations)) or "none",
            )
            if on_ready is not None:
                on_ready(port)
            await stop.wait()
            await monitor.shutdown()
            log.info(
                "shutdown requested: NOT_SERVING, still serving for %.1fs, then up to %.1fs "
                "for calls in flight",
                settings.drain_delay_s,
                settings.shutdown_grace_s,
            )
            await asyncio.sleep(settings.drain_delay_s)
        finally:
            await monitor.shutdown()
            await server.stop(settings.shutdown_grace_s)
            if health_only is not None:
                await health_only.stop(0)
            log.info("server stopped")
