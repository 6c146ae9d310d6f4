"""Benchmark data and backends: own database, own Redis namespace, bulk COPY loads.

Everything created here is named with a random run id and removed by the
``cleanup_*`` helpers (SCAN + UNLINK for keys, never FLUSHALL/FLUSHDB).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

COUNTRIES = ("DE", "FR", "US", "GB", "JP", "BR", "IN", "ES", "IT", "NL")
PLANS = ("free", "pro", "team", "enterprise")


@dataclass(frozen=True)
class Backends:
    """Where the benchmark's PostgreSQL (admin database) and Redis live."""

    postgres_admin_dsn: str
    redis_url: str
    embedded: bool


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or default_port), 1.0):
            return True
    except OSError:
        return False


@asynccontextmanager
async def open_backends(pg_dsn: str, redis_url: str, tmp: Path) -> AsyncIterator[Backends]:
    """The given servers when reachable, else embedded ones under ``tmp`` (stopped on exit)."""
    if _reachable(pg_dsn, 5432) and _reachable(redis_url, 6379):
        yield Backends(pg_dsn, redis_url, embedded=False)
        return
    from mcprouter.server.embedded import embedded_postgres, embedded_redis

    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(embedded_redis(tmp / "embedded"))
        dsn = await stack.enter_async_context(embedded_postgres(tmp / "embedded"))
        yield Backends(dsn, url, embedded=True)


@dataclass
class BenchRun:
    """What one bench run owns; all of it is removed when ``bench_run`` exits."""

    token: str  # the run id in every name below
    tmp: Path
    stack: AsyncExitStack
    backends: Backends
    dsn: str  # a migrated database of this run
    namespace: str  # the prefix of every Redis key of this run


@asynccontextmanager
async def bench_run(pg_dsn: str, redis_url: str, name: str, sep: str) -> AsyncIterator[BenchRun]:
    """A temporary folder, backends, a migrated database and a key namespace of a run.

    ``sep`` ends the namespace (``bench-<id>:``, or ``bench-<id>-`` when the
    bench adds a suffix per server). Prints the load average first: figures
    from a busy machine are read differently.
    """
    token = secrets.token_hex(4)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
        tmp = Path(folder)
        async with AsyncExitStack() as stack:
            backends = await stack.enter_async_context(open_backends(pg_dsn, redis_url, tmp))
            dsn = await migrated_database(stack, backends, f"mcprouter_bench_{token}")
            namespace = f"bench-{token}{sep}"
            stack.push_async_callback(unlink_matching, backends.redis_url, namespace + "*")
            yield BenchRun(token, tmp, stack, backends, dsn, namespace)


async def migrated_database(stack: AsyncExitStack, backends: Backends, database: str) -> str:
    """Create ``database`` with the service's schema, dropped when ``stack`` closes; its DSN."""
    from mcprouter.server.postgres.migrations import apply_migrations

    dsn = await create_database(backends.postgres_admin_dsn, database)
    stack.push_async_callback(drop_database, backends.postgres_admin_dsn, database)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return dsn


def database_dsn(admin_dsn: str, database: str) -> str:
    """``admin_dsn`` pointing at another database (query string kept)."""
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def create_database(admin_dsn: str, database: str) -> str:
    """Create ``database``; return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return database_dsn(admin_dsn, database)


async def drop_database(admin_dsn: str, database: str) -> None:
    """Drop ``database``, disconnecting whoever is left (PostgreSQL 13+)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def experiment_row(experiment_id: str, rng: random.Random) -> tuple[object, ...]:
    """One ``experiments`` row: running, 2 or 3 variants."""
    names = ("control", "treatment", "treatment_b")[: rng.choice((2, 3))]
    variants = [{"name": n, "weight": 100 // len(names)} for n in names]
    return (
        experiment_id,
        f"Experiment {experiment_id}",
        "checkout button colour and copy, benchmark fixture",
        "running",
        rng.randbytes(8).hex(),
        json.dumps(variants),
        1,
    )


def profile_row(user_id: str, rng: random.Random) -> tuple[object, ...]:
    """One ``user_profiles`` row with a few string attributes."""
    attributes = {
        "country": rng.choice(COUNTRIES),
        "plan": rng.choice(PLANS),
        "signup_year": str(rng.randint(2015, 2025)),
        "segment": f"seg-{rng.randint(0, 99):02d}",
    }
    return (user_id, json.dumps(attributes), 1)


async def copy_rows(dsn: str, experiments: list[str], users: list[str], seed: int = 7) -> None:
    """COPY experiments and profiles into the (migrated) database."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "experiments",
            records=[experiment_row(e, rng) for e in experiments],
            columns=[
                "experiment_id",
                "name",
                "description",
                "status",
                "salt",
                "variants",
                "version",
            ],
        )
        await conn.copy_records_to_table(
            "user_profiles",
            records=[profile_row(u, rng) for u in users],
            columns=["user_id", "attributes", "version"],
        )
        await conn.execute("ANALYZE experiments; ANALYZE user_profiles")
    finally:
        await conn.close()


async def unlink_matching(redis_url: str, pattern: str) -> int:
    """SCAN + UNLINK every key matching ``pattern``; return how many were removed."""
    client = aioredis.Redis.from_url(redis_url)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += await client.unlink(*batch)
                batch.clear()
        if batch:
            removed += await client.unlink(*batch)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return removed
