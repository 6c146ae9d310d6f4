"""Versioned SQL migrations for the PostgreSQL store.

Migrations are the ``NNNN_name.sql`` files of this package, applied in name
order; the file's stem is its version and is recorded in
``schema_migrations``. Files are read with :mod:`importlib.resources`, so they
work from an installed wheel as well as from a checkout. A released migration
is never edited: change the schema with a new file.

Safety:

* each migration runs in its own transaction together with its
  ``schema_migrations`` row, so a failure leaves no half-applied schema;
* every transaction first takes ``pg_advisory_xact_lock(LOCK_KEY)`` and then
  re-checks whether its version is applied, so any number of processes can
  start at once and each migration still runs exactly once. Transaction-level
  locks are released by COMMIT/ROLLBACK, so nothing session-level leaks into a
  pooled connection (the pool skips its session reset, see ``postgres_store``);
* applying is idempotent: a second run applies nothing and returns ``[]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from asyncpg import Connection, Record
    from asyncpg.pool import PoolConnectionProxy

    # asyncpg's classes are generic only in the stubs, so this alias is for mypy.
    AnyConnection: TypeAlias = Connection[Record] | PoolConnectionProxy[Record]

# Any bigint unique to this application; "mcproute" in ASCII.
LOCK_KEY = 0x6D_63_70_72_6F_75_74_65

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: its version (the file stem) and its text."""

    version: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in the order they apply."""
    files = [
        entry
        for entry in resources.files(__name__).iterdir()
        if entry.is_file() and entry.name.endswith(".sql")
    ]
    return [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in sorted(files, key=lambda e: e.name)
    ]


async def applied_versions(conn: AnyConnection) -> set[str]:
    """The versions recorded in ``schema_migrations`` (empty before the first run)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    rows = await conn.fetch("SELECT version FROM schema_migrations")
    return {row["version"] for row in rows}


async def pending_migrations(conn: AnyConnection) -> list[Migration]:
    """The shipped migrations this database has not applied yet."""
    done = await applied_versions(conn)
    return [m for m in available_migrations() if m.version not in done]


async def apply_migrations(conn: AnyConnection) -> list[str]:
    """Apply every pending migration; safe to call from many processes at once.

    Args:
        conn: A connection not inside a transaction (each migration opens its own).

    Returns:
        The versions this call applied, in order; ``[]`` when up to date.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}

    applied: list[str] = []
    for migration in available_migrations():
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            # Another process may have applied it while we waited for the lock.
            if await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            ):
                continue
            # No arguments: asyncpg uses the simple protocol, so a file may
            # hold several statements.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
            )
        applied.append(migration.version)
    return applied
