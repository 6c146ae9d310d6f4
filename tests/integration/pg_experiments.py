"""Experiments in a real PostgreSQL schema, loaded the way production loads them.

In production the cache core's experiment loader is
``PostgresStore.get_experiment``. The tests of the core use that same store,
on a pool over a schema of their own (``experiment_db`` in ``conftest.py``
creates, migrates and drops it), reached through a ``PostgresProxy``:

- rows are written with plain SQL on a direct connection (test set-up, not
  counted), and a missing row is a real miss (the store returns ``None``);
- ``Loads`` wraps the store without replacing it: it counts loads, can hold a
  load at a gate before or after its query, and keeps what the store raised;
- a failure is a real one: ``ExperimentDb.down()`` makes the proxy cut every
  connection and refuse new ones, and the store translates what asyncpg then
  raises into ``Unavailable`` (``postgres.failures``), as in production.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from mcprouter.server.postgres.store import PostgresStore
from mcprouter.v1.experiment_pb2 import Experiment
from tests.consistency.proxy import PostgresProxy
from tests.fakes import FakeClock

_PUT = """
INSERT INTO experiments (experiment_id, name, status, salt, variants, version)
VALUES ($1, $2, $3, 'salt-of-' || $1, $4::jsonb, $5)
ON CONFLICT (experiment_id) DO UPDATE
SET name = EXCLUDED.name, status = EXCLUDED.status, variants = EXCLUDED.variants,
    version = EXCLUDED.version, updated_at = now()
"""
_VARIANTS = json.dumps([{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}])


def tcp_address(dsn: str) -> tuple[str, int]:
    """Host and port of a TCP DSN (a proxy can only sit on TCP)."""
    parts = urllib.parse.urlsplit(dsn)
    assert parts.hostname and parts.port, f"a TCP DSN with host and port is needed: {dsn}"
    return parts.hostname, parts.port


def through_proxy(dsn: str, port: int) -> str:
    """The same DSN, reaching the server through a proxy on ``127.0.0.1:port``."""
    parts = urllib.parse.urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def in_schema(dsn: str, schema: str) -> str:
    """The same DSN with ``search_path`` set to ``schema`` (asyncpg passes it on)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}search_path={schema}"


@dataclass
class ExperimentDb:
    """One test's schema: a direct connection for set-up, a proxied pool for loads."""

    admin: asyncpg.Connection
    pool: asyncpg.Pool
    proxy: PostgresProxy

    async def put(self, experiment_id: str, *, version: int = 1, status: str = "running") -> None:
        """Create or overwrite a row (commits at once: one statement)."""
        await self.admin.execute(_PUT, experiment_id, "checkout", status, _VARIANTS, version)

    def down(self) -> None:
        """PostgreSQL unreachable: open connections are reset, new ones refused."""
        self.proxy.unreachable()

    def up(self) -> None:
        """PostgreSQL reachable again."""
        self.proxy.pass_through()


class Loads:
    """``PostgresStore.get_experiment`` as a cache loader, instrumented for tests.

    Attributes:
        calls: Loads started (the cache core's loader invocations).
        raised: What the store raised, in order (``Unavailable`` when PostgreSQL is down).
        gate: When set, a load waits for it before its query.
        gate_after: When set, a load waits for it after its query (holding what it read).
        started: Set when a load starts.
        queried: Set when a load's query has answered.
    """

    def __init__(self, db: ExperimentDb, clock: FakeClock | None = None, load_seconds: float = 0.0):
        self._db = db
        self._store = PostgresStore(db.pool)
        self.calls = 0
        self.raised: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.gate_after: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.queried = asyncio.Event()
        self._clock = clock
        self._load_seconds = load_seconds

    async def put(self, key: str, version: int = 1, status: str = "running") -> Experiment:
        """Write ``key``'s row and return it as the store reads it (not counted)."""
        experiment_id = key.split(":")[1]
        await self._db.put(experiment_id, version=version, status=status)
        value = await self._store.get_experiment(experiment_id)
        assert value is not None
        return value

    def loader(self, key: str) -> Callable[[], Awaitable[Experiment | None]]:
        """The loader of ``key`` (``experiment:{id}``)."""
        experiment_id = key.split(":")[1]

        async def load() -> Experiment | None:
            self.calls += 1
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            try:
                value = await self._store.get_experiment(experiment_id)
            except Exception as exc:
                self.raised.append(exc)
                raise
            self.queried.set()
            if self.gate_after is not None:
                await self.gate_after.wait()
            if self._clock is not None:
                self._clock.advance(self._load_seconds)  # a load that takes load_seconds
            return value

        return load
