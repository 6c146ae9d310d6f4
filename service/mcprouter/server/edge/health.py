"""Health: the standard ``grpc.health.v1`` service, kept current by a probe.

Service names reported:

- ``""`` (overall) and ``mcprouter.v1.RouterService``: SERVING while the
  process accepts work; NOT_SERVING once shutdown starts. They deliberately do
  *not* follow the backends: reads fail open to the stores and serve stale
  data when a store is down, and every instance shares the same Redis and
  stores, so pulling instances out of rotation for a shared backend's outage
  would turn a partial degradation into a full one.
- one name per backend (``redis``, ``postgres``, ...): SERVING when its probe
  answered within the timeout, NOT_SERVING otherwise; watch these to alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from mcprouter.server.app import Probe

log = logging.getLogger(__name__)

ROUTER_SERVICE = "mcprouter.v1.RouterService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health servicer, whose Watch streams end once shutdown begins.

    ``server.stop(grace)`` waits for every open RPC, and a stock ``Watch``
    never ends by itself: one watching load balancer would make every shutdown
    take the whole grace period. Here a stream sends its final NOT_SERVING and
    closes as soon as ``enter_graceful_shutdown`` has run. ``Check`` is the
    stock one; ``Watch`` keeps its own copy of the statuses to wait on.
    """

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored once shutdown has begun)."""
        await super().set(service, status)
        async with self._changed:
            if not self._closing:
                self._statuses[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING everywhere, for good, and end the Watch streams."""
        await super().enter_graceful_shutdown()
        async with self._changed:
            self._closing = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """Stream a service's status changes until the client leaves or shutdown begins."""
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        last: int | None = None
        async with self._changed:
            while True:
                status = self._statuses.get(request.service, unknown)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._closing:
                    return
                await self._changed.wait()


class HealthMonitor:
    """Probes each backend on an interval and publishes the results."""

    def __init__(
        self,
        servicer: health_aio.HealthServicer,
        probes: Mapping[str, Probe],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.servicer = servicer
        self._probes = dict(probes)
        self._interval = interval_s
        self._timeout = timeout_s
        self._task: asyncio.Task[None] | None = None
        self.backend_status: dict[str, int] = {}

    async def start(self) -> None:
        """Publish SERVING for the service, probe once, then keep probing."""
        for name in ("", ROUTER_SERVICE):
            await self.servicer.set(name, SERVING)
        await self.probe_once()
        self._task = asyncio.create_task(self._run(), name="health-probe")

    async def probe_once(self) -> None:
        """Probe every backend concurrently and publish each status."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(n) for n in names))
        for name, healthy in zip(names, results, strict=True):
            status = SERVING if healthy else NOT_SERVING
            if self.backend_status.get(name) != status:
                log.log(
                    logging.INFO if healthy else logging.WARNING,
                    "backend %s is %s",
                    name,
                    "SERVING" if healthy else "NOT_SERVING",
                )
            self.backend_status[name] = status
            await self.servicer.set(name, status)

    async def _probe(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probes[name]()
        except Exception as exc:  # any failure means "not serving"
            log.debug("probe %s failed: %s", name, exc)
            return False
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_once()

    async def shutdown(self) -> None:
        """Stop probing and report NOT_SERVING everywhere (shutdown has begun)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.servicer.enter_graceful_shutdown()
