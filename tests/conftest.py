"""Session fixtures: real Redis and PostgreSQL, isolated per run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests import backends


@pytest.fixture(scope="session")
def backend_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backends")


@pytest.fixture(scope="session")
def redis_url(backend_tmp: Path) -> Iterator[str]:
    with backends.redis_server(backend_tmp) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin_dsn(backend_tmp: Path) -> Iterator[str]:
    with backends.postgres_server(backend_tmp) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def postgres_dsn(postgres_admin_dsn: str) -> Iterator[str]:
    """DSN of a database created for this run and dropped after it."""
    dsn = asyncio.run(backends.create_database(postgres_admin_dsn))
    try:
        yield dsn
    finally:
        asyncio.run(backends.drop_database(postgres_admin_dsn, dsn))


@pytest.fixture
def namespace() -> str:
    """A fresh key namespace per test, so tests never see each other's keys."""
    return backends.unique_namespace()


@pytest.fixture
async def redis_client(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A client for the test Redis; removes the test's namespace afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        batch = [key async for key in client.scan_iter(match=namespace + "*", count=500)]
        if batch:
            await client.unlink(*batch)
        await client.aclose()
