"""A "bare" RouterService: RouteData answers a prebuilt response, no backend touched.

The ceiling of Python gRPC on this machine for the same RPC and message sizes
as the real server (same grpc.aio server, uvloop, health service; no
interceptor, no validation, no cache, no store).

Usage: ``python bench/_bare_server.py PORT [RESPONSES.json]`` where the JSON
maps a RouteData operation (``get_experiment`` ...) to the hex of a real
serialized ``RouteDataResponse``; without it, synthetic answers of typical
size are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import ServeStatus


def synthetic_responses() -> dict[str, rs.RouteDataResponse]:
    """Answers shaped like real ones, for use without a responses file."""
    exp = Experiment(
        experiment_id="exp-00000",
        name="Experiment 0",
        description="benchmark experiment",
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=50), Variant(name="treatment", weight=50)],
        version=1,
        salt="0123456789abcdef",
    )
    answer = rs.RouteDataResponse(
        status=ServeStatus.SERVE_STATUS_CACHED, cache_key="experiment:exp-00000", experiment=exp
    )
    return {"get_experiment": answer}


def load_responses(path: Path) -> dict[str, rs.RouteDataResponse]:
    """Responses by operation from a JSON file of hex-encoded messages."""
    raw: dict[str, str] = json.loads(path.read_text())
    return {op: rs.RouteDataResponse.FromString(bytes.fromhex(blob)) for op, blob in raw.items()}


class BareRouter(rs_grpc.RouterServiceServicer):
    """RouteData returns the prebuilt answer of the request's operation."""

    def __init__(self, responses: dict[str, rs.RouteDataResponse]) -> None:
        self._responses = responses
        self._default = next(iter(responses.values()))

    async def RouteData(
        self, request: rs.RouteDataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rs.RouteDataResponse:
        op = request.WhichOneof("operation") or ""
        return self._responses.get(op, self._default)

    async def Stats(
        self, request: rs.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rs.StatsResponse:
        return rs.StatsResponse(instance=f"bare/{os.getpid()}/0", processes=1)


async def serve(port: int, responses: dict[str, rs.RouteDataResponse]) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    # GetCached and Invalidate stay UNIMPLEMENTED (the base class answers them).
    bare = BareRouter(responses)  # type: ignore[abstract]
    rs_grpc.add_RouterServiceServicer_to_server(bare, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def run(port: int, responses: dict[str, rs.RouteDataResponse]) -> None:
    """One server process until SIGTERM."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(port, responses))


def main() -> None:
    """Entry point: ``PORT [RESPONSES.json]``; ``BARE_WORKERS=N`` forks N on the port.

    With N > 1 it follows grpc's multiprocessing example, as ``serve --workers``
    does: fork before any gRPC object exists, each child one server on the
    port (SO_REUSEPORT); the parent forwards SIGTERM/SIGINT and waits.
    """
    port = int(sys.argv[1])
    responses = load_responses(Path(sys.argv[2])) if len(sys.argv) > 2 else synthetic_responses()
    workers = int(os.environ.get("BARE_WORKERS", "1"))
    if workers <= 1:
        run(port, responses)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                run(port, responses)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
