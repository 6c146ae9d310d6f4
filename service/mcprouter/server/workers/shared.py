"""What the supervisor starts once for all its workers, and the settings they get.

| URL unset  | ``WORKERS=1``                 | ``WORKERS=N``                                      |
|------------|-------------------------------|----------------------------------------------------|
| Redis      | embedded Valkey (a child)     | the same, started once by the supervisor           |
| PostgreSQL | embedded ``pgserver``         | the same, started and migrated once                |
| Chroma     | ``PersistentClient`` in the   | one ``chroma run`` server on 127.0.0.1 on the same |
|            | process                       | folder, over HTTP (a PersistentClient is one       |
|            |                               | process's)                                         |
| ClickHouse | chDB in the process           | chDB in the *ClickHouse host* process              |
|            |                               | (``clickhouse/host.py``), over a Unix socket (chDB |
|            |                               | is one process's: one engine, one data path)       |

Each worker gets a copy of the settings in which those are plain URLs (the
production shape: a worker cannot tell an embedded backend from a server),
migrations already applied, and the listening addresses with their reserved
ports. The embedded servers' calls block, so they run on threads; those
threads end before any worker is forked (``OneShotThreads``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mcprouter.server.config import Settings
from mcprouter.server.embedded import embedded_postgres, embedded_redis

log = logging.getLogger(__name__)

T = TypeVar("T")
CHROMA_START_TIMEOUT_S = 90.0
CHROMA_STOP_TIMEOUT_S = 15.0


class OneShotThreads(concurrent.futures.ThreadPoolExecutor):
    """An executor whose threads end with their call: none is left idle across a fork.

    A forked child gets a copy of the parent's memory with only the forking
    thread running; a lock another thread held at that moment stays held in
    the child forever. So the supervisor keeps no thread alive while it
    forks: each blocking call gets a thread of its own that ends with it.
    """

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Run ``fn`` on a new thread that exits when it returns."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)

        threading.Thread(target=run, name="supervisor-call", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop: no thread outlives its call."""


def free_loopback_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SharedBackends:
    """The worker settings (URLs of what the supervisor started) and the ClickHouse host."""

    worker_settings: Settings
    clickhouse_data: Path | None
    """chDB's data path when the ClickHouse host must run (no ``CLICKHOUSE_URL``
    or a ``chdb://`` one); ``None`` when the workers reach a server."""


@asynccontextmanager
async def chroma_server(folder: Path, log_path: Path) -> AsyncIterator[str]:
    """A ``chroma run`` server on a free 127.0.0.1 port, on ``folder``; yields its URL.

    It gets a session of its own, so a Ctrl-C in the terminal (SIGINT to the
    foreground group) reaches the workers, which drain, and not the server
    they are still using; the supervisor stops it after the workers.
    """
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    process = await asyncio.to_thread(_start_chroma, folder, log_path, port)
    try:
        deadline = time.monotonic() + CHROMA_START_TIMEOUT_S
        while not await asyncio.to_thread(_heartbeat, url):
            if process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chroma run not ready in {CHROMA_START_TIMEOUT_S:g}s")
            await asyncio.sleep(0.2)
        log.info("Chroma server started at %s (data in %s, log %s)", url, folder, log_path)
        yield url
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, CHROMA_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        log.info("Chroma server stopped")


def _start_chroma(folder: Path, log_path: Path, port: int) -> subprocess.Popen[bytes]:
    executable = Path(sys.executable).with_name("chroma")
    if not executable.exists():
        raise RuntimeError(f"CHROMA_URL is unset and no `chroma` executable at {executable}")
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [str(executable), "run", "--path", str(folder), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )  # fmt: skip


def _heartbeat(url: str) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as reply,
    ):
        return bool(reply.status == 200)
    return False


async def _migrate_postgres(settings: Settings, dsn: str) -> None:
    from mcprouter.server.app import migrate
    from mcprouter.server.postgres.pool import create_pool

    pool = await create_pool(dsn, min_size=0, max_size=1, command_timeout=60)
    try:
        await migrate(pool)
    finally:
        await pool.close()


async def _migrate_clickhouse(url: str) -> None:
    from mcprouter.server.clickhouse.store import open_clickhouse

    store = await open_clickhouse(url, query_workers=1)
    try:
        applied = await store.migrate()
        log.info("ClickHouse migrations applied: %s", ", ".join(applied) or "none pending")
    finally:
        await store.close()


@asynccontextmanager
async def open_shared_backends(settings: Settings) -> AsyncIterator[SharedBackends]:
    """Start the backends the workers share; stop them on exit (after the workers)."""
    async with AsyncExitStack() as stack:
        data_dir = settings.data_dir.resolve()
        update: dict[str, Any] = {"workers": 1, "migrate_on_start": False, "metrics_address": ""}
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url = await stack.enter_async_context(embedded_redis(data_dir))
            update["redis_url"] = redis_url
        dsn = settings.postgres_dsn
        if dsn is None:
            dsn = await stack.enter_async_context(embedded_postgres(data_dir))
            update["postgres_dsn"] = dsn
        if settings.postgres_dsn is None or settings.migrate_on_start:
            await _migrate_postgres(settings, dsn)
        if settings.chroma_url is None:
            update["chroma_url"] = await stack.enter_async_context(
                chroma_server(data_dir / "chroma", data_dir / "chroma-server.log")
            )
        clickhouse_data: Path | None = None
        url = settings.clickhouse_url
        if url is None:
            clickhouse_data = data_dir / "clickhouse"
        elif url.startswith("chdb://"):
            clickhouse_data = data_dir / Path(url.removeprefix("chdb://"))
        elif settings.migrate_on_start:
            await _migrate_clickhouse(url)
        yield SharedBackends(settings.model_copy(update=update), clickhouse_data)
