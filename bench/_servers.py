"""The servers the PostgreSQL benchmark measures, and which mode runs on which.

| server  | process                                                   | namespace |
|---------|-----------------------------------------------------------|-----------|
| l1      | ``mcp-router serve``, default cache: L1 in front of Redis | ``c:``    |
| redis   | the same with ``CACHE_LOCAL_MAX_ENTRIES=0``: Redis only   | ``r:``    |
| nocache | the same with ``CACHE_ENABLED=false``                     | ``n:``    |
| bare    | ``_bare_server.py``: a prebuilt answer, no backend        | -         |
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from _common import MCP_ROUTER, Channels, ServerProcess, free_port

from mcprouter.server.config import Settings

# The server each matrix mode is measured on.
SERVER_OF_MODE = {
    "hit-l1": "l1",
    "hit-redis": "redis",
    "miss": "l1",
    "no-cache": "nocache",
    "bare": "bare",
}
MODES = tuple(SERVER_OF_MODE)

# The server's own defaults, passed explicitly so that a CACHE_LOCAL_* variable
# in the bench's environment cannot change what "default" measures.
L1_MAX_ENTRIES = int(Settings.model_fields["cache_local_max_entries"].default)
L1_MAX_AGE_S = float(Settings.model_fields["cache_local_max_age_s"].default)


@dataclass
class Servers:
    """The servers under test (by name: l1, redis, nocache, bare) and channels to each."""

    processes: dict[str, ServerProcess]
    channels: dict[str, Channels]

    def of(self, mode: str) -> Channels:
        """Channels to the server ``mode`` is measured on."""
        return self.channels[SERVER_OF_MODE[mode]]


def router_server(name: str, port: int, env: dict[str, str], tmp: Path) -> ServerProcess:
    """An ``mcp-router serve`` subprocess (its own DATA_DIR; LOG_LEVEL=WARNING)."""
    data_dir = tmp / name
    data_dir.mkdir()
    env = {
        "LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "MIGRATE_ON_START": "true",
        "SHUTDOWN_GRACE_S": "1",
        "DRAIN_DELAY_S": "0",
        **env,
    }
    argv = [str(MCP_ROUTER), "serve"]
    return ServerProcess(name, argv, env, port, tmp / f"{name}.log")


def bare_server(port: int, responses: Path, tmp: Path) -> ServerProcess:
    """The bare RouterService subprocess."""
    argv = [sys.executable, str(Path(__file__).with_name("_bare_server.py")), str(port)]
    return ServerProcess("bare", [*argv, str(responses)], {}, port, tmp / "bare.log")


async def start_routers(
    stack: AsyncExitStack, dsn: str, redis_url: str, namespace: str, tmp: Path
) -> dict[str, ServerProcess]:
    """The three mcp-router servers, started together, stopped on exit."""
    common = {"POSTGRES_DSN": dsn, "REDIS_URL": redis_url}
    l1 = {
        "CACHE_LOCAL_MAX_ENTRIES": str(L1_MAX_ENTRIES),
        "CACHE_LOCAL_MAX_AGE_S": str(L1_MAX_AGE_S),
    }
    envs = {
        "l1": {**l1, "KEY_NAMESPACE": namespace + "c:"},
        "redis": {"CACHE_LOCAL_MAX_ENTRIES": "0", "KEY_NAMESPACE": namespace + "r:"},
        "nocache": {"CACHE_ENABLED": "false", "KEY_NAMESPACE": namespace + "n:"},
    }
    servers = {
        name: router_server(name, free_port(), {**common, **env}, tmp) for name, env in envs.items()
    }
    for server in servers.values():
        server.start(tmp)
        stack.callback(server.stop)
    await asyncio.gather(*(s.wait_healthy() for s in servers.values()))
    return servers


async def open_channels(stack: AsyncExitStack, server: ServerProcess, count: int) -> Channels:
    """Channels to ``server``, closed on exit."""
    channels = Channels(server.target, count)
    stack.push_async_callback(channels.close)
    return channels
