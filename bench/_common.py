"""Shared helpers of the benchmarks: load runner, percentiles, server processes, tables.

Nothing here asserts anything about time: benchmarks print figures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.serve_status_pb2 import DataType

REPO = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING
# The repository's venv, else the one running the bench (a git worktree has no .venv).
_VENV_ROUTER = REPO / ".venv/bin/mcp-router"
MCP_ROUTER = _VENV_ROUTER if _VENV_ROUTER.exists() else Path(sys.executable).with_name("mcp-router")

# A request factory gets the worker's sequence number and returns the request.
RequestFactory = Callable[[int], rs.RouteDataRequest]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_us: list[float] = field(default_factory=list)
    error_codes: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)  # by code: its first message
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def p(self, q: float) -> float:
        """Latency percentile of successful requests, in microseconds."""
        return percentile(self.latencies_us, q)


class Channels:
    """A few grpc.aio channels to one target, each its own TCP connection."""

    def __init__(self, target: str, count: int) -> None:
        # A local subchannel pool keeps gRPC from sharing one connection
        # between channels with equal arguments.
        self._channels = [
            grpc.aio.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
            )
            for i in range(count)
        ]
        self.stubs = [rs_grpc.RouterServiceStub(ch) for ch in self._channels]

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close(None)

    async def stats(self) -> rs.StatsResponse:
        """The server's Stats snapshot."""
        return await self.stubs[0].Stats(rs.StatsRequest(), timeout=10)


def type_stats(stats: rs.StatsResponse, data_type: DataType.ValueType) -> rs.DataTypeStats:
    """The per-type counters of ``data_type``."""
    for entry in stats.data_types:
        if entry.data_type == data_type:
            return entry
    return rs.DataTypeStats(data_type=data_type)


def diff(after: rs.DataTypeStats, before: rs.DataTypeStats, name: str) -> int:
    """Counter increase between two snapshots."""
    return int(getattr(after, name)) - int(getattr(before, name))


def local_hits(stats: rs.StatsResponse) -> int:
    """Hits served from the server's in-process L1, all data types together."""
    return sum(int(entry.local_hits) for entry in stats.data_types)


async def run_closed_loop(
    stubs: Sequence[rs_grpc.RouterServiceStub],
    make_request: RequestFactory,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """``concurrency`` workers each send one request at a time until time or count runs out.

    Worker ``i`` uses channel ``i % len(stubs)``. Request numbers are global and
    never repeat within a run, so a factory can hand out distinct keys.
    """
    result = LoadResult()
    counter = iter(range(max_requests))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def worker(stub: rs_grpc.RouterServiceStub) -> None:
        for n in counter:
            if loop.time() >= deadline:
                return
            request = make_request(n)
            started = time.perf_counter()
            try:
                reply = await stub.RouteData(request, timeout=10)  # type: ignore[misc]
            except grpc.aio.AioRpcError as exc:
                result.errors += 1
                name = exc.code().name
                result.error_codes[name] = result.error_codes.get(name, 0) + 1
                result.first_errors.setdefault(name, exc.details() or "")
                continue
            result.latencies_us.append((time.perf_counter() - started) * 1e6)
            result.statuses[reply.status] = result.statuses.get(reply.status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    result.requests = len(result.latencies_us)
    result.latencies_us.sort()
    return result


async def call_many(
    stub: rs_grpc.RouterServiceStub, requests: Sequence[rs.RouteDataRequest], concurrency: int
) -> int:
    """Send ``requests`` with bounded concurrency (warm-up, priming); return errors."""
    errors = 0
    queue = iter(requests)

    async def worker() -> None:
        nonlocal errors
        for request in queue:
            try:
                await stub.RouteData(request, timeout=30)  # type: ignore[misc]
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


@dataclass
class ServerProcess:
    """A server subprocess with its log in a file (never an undrained pipe)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    def start(self, cwd: Path) -> None:
        """Start it in its own session, so a Ctrl-C reaches only the bench."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Poll the standard health Check until it answers SERVING."""
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not healthy in {timeout_s}s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time. Safe to call twice."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is not None:
            # It exited before we asked: say so, with its log, before the log is gone.
            print(f"!! {self.name} had already exited (rc={proc.returncode}):\n{self.tail()}")
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
