"""Fixtures the integration tests share: a migrated database and a pool on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from mcprouter.server.postgres.migrations import apply_migrations
from mcprouter.server.postgres.pool import create_pool
from tests.consistency.proxy import PostgresProxy
from tests.integration.pg_experiments import ExperimentDb, in_schema, tcp_address, through_proxy


@pytest.fixture(scope="module")
async def migrated_dsn(postgres_dsn: str) -> str:
    """The run's database, with every migration applied (idempotent)."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return postgres_dsn


@pytest.fixture
async def pool(migrated_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the migrated database, closed after the test."""
    pool = await create_pool(migrated_dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
def postgres_proxy(postgres_dsn: str) -> Iterator[PostgresProxy]:
    """A TCP proxy to the test PostgreSQL that a test can make unreachable."""
    proxy = PostgresProxy(tcp_address(postgres_dsn)).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
async def experiment_db(
    postgres_dsn: str, postgres_proxy: PostgresProxy
) -> AsyncIterator[ExperimentDb]:
    """A migrated schema of this test's own, its pool reached through ``postgres_proxy``.

    The schema (and everything in it) is dropped after the test.
    """
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    pool: asyncpg.Pool | None = None
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.execute(f'SET search_path TO "{schema}"')
        await apply_migrations(admin)
        dsn = in_schema(through_proxy(postgres_dsn, postgres_proxy.port), schema)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        yield ExperimentDb(admin, pool, postgres_proxy)
    finally:
        postgres_proxy.pass_through()
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
