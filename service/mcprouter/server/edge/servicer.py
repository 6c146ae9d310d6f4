"""RouterServicer: the thin gRPC layer of ``mcprouter.v1.RouterService``.

Each method validates its request, awaits one router/processor call and maps
the answer to a response. No business logic and no database library here;
errors are translated to gRPC statuses by ``grpc_errors``.
"""

from __future__ import annotations

from typing import Any

import grpc

from mcprouter.server import request_checks as checks
from mcprouter.server.edge.responses import get_cached_response, route_response, stats_response
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.fleet import FleetStats, FleetView
from mcprouter.server.operations import validated
from mcprouter.server.redis.processor import RedisFigures, RedisProcessor
from mcprouter.server.router import Router
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class RouterServicer(rs_grpc.RouterServiceServicer):
    """Implements the four RPCs of RouterService."""

    def __init__(
        self,
        router: Router,
        cache_ops: RedisProcessor,
        stats: CacheStats,
        fleet: FleetStats | None = None,
    ) -> None:
        self._router = router
        self._cache_ops = cache_ops
        self._stats = stats
        self._fleet = fleet

    async def RouteData(
        self, request: rs.RouteDataRequest, context: Context
    ) -> rs.RouteDataResponse:
        """Route one operation to the processor that owns its data."""
        self._stats.operation()
        operation = validated(request)
        result = await self._router.route(operation, getattr(request, operation.name))
        return route_response(operation, result)

    async def GetCached(
        self, request: rs.GetCachedRequest, context: Context
    ) -> rs.GetCachedResponse:
        """Read keys straight from the cache."""
        self._stats.operation()
        checks.validate_get_cached(request)
        return get_cached_response(await self._cache_ops.get_cached(list(request.keys)))

    async def Invalidate(
        self, request: rs.InvalidateRequest, context: Context
    ) -> rs.InvalidateResponse:
        """Remove cache entries by keys, pattern or entity."""
        self._stats.operation()
        target = checks.validate_invalidate(request)
        ops = self._cache_ops
        if target == "keys":
            removed = await ops.invalidate_keys(list(request.keys.keys))
        elif target == "pattern":
            removed = await ops.invalidate_pattern(request.pattern)
        elif target == "experiment_id":
            removed = await ops.invalidate_experiment(request.experiment_id)
        elif target == "user_id":
            removed = await ops.invalidate_user(request.user_id)
        else:
            removed = await ops.invalidate_collection(request.collection)
        return rs.InvalidateResponse(removed=removed)

    async def Stats(self, request: rs.StatsRequest, context: Context) -> rs.StatsResponse:
        """Report this process's counters, or the fleet's; Redis figures omitted when down."""
        figures: RedisFigures | None
        try:
            figures = await self._cache_ops.figures()
        except CacheUnavailable:
            figures = None
        fleet = self._fleet
        if request.scope == rs.STATS_SCOPE_FLEET:
            view = FleetView(self._stats.snapshot(), ("",), 0.0)
            if fleet is not None:
                view = await fleet.fleet()
            return stats_response(view.snapshot, figures, scope=rs.STATS_SCOPE_FLEET, view=view)
        instance = "" if fleet is None else fleet.instance
        view = FleetView(self._stats.snapshot(), (instance,), 0.0)
        return stats_response(view.snapshot, figures, scope=rs.STATS_SCOPE_PROCESS, view=view)
