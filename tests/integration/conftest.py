"""Fixtures the integration tests share: a migrated database and a pool on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from mcprouter.server.postgres.migrations import apply_migrations
from mcprouter.server.postgres.pool import create_pool


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
