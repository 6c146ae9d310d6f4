"""What each forked child runs: a worker (the server) or the ClickHouse host.

Imported by the supervisor only when it starts its children; everything a
child needs beyond that (grpc, the stores' drivers) is imported in the child
after the fork.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from mcprouter.server.config import Settings
from mcprouter.server.workers.role import WorkerRole


def worker_target(
    settings: Settings, index: int, metrics_socket: Path | None
) -> Callable[[Callable[[], None]], None]:
    """A worker: today's server on the shared port, until SIGTERM drains it."""

    def run(ready: Callable[[], None]) -> None:
        from mcprouter.server.edge.server import serve

        role = WorkerRole(index=index, metrics_socket=metrics_socket)
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
            runner = asyncio.Runner()
        with runner:
            runner.run(serve(settings, on_ready=lambda port: ready(), worker=role))

    return run


def clickhouse_host_target(
    socket_path: Path, data_path: Path
) -> Callable[[Callable[[], None]], None]:
    """The ClickHouse host: chDB on ``data_path``, served on ``socket_path``."""

    def run(ready: Callable[[], None]) -> None:
        from mcprouter.server.clickhouse.host import run_host

        # Its own process group already keeps a terminal's Ctrl-C away; the
        # supervisor stops it with SIGTERM after the workers drained.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run_host(socket_path, data_path, ready)

    return run
