"""The asyncpg pool the PostgreSQL store runs on.

Two choices are made here, once, for every connection:

* ``init=`` registers a JSON codec for ``json``/``jsonb``, so the store reads
  and writes variants and profile attributes as Python lists and dicts.
* ``reset=`` replaces asyncpg's release-time reset with a no-op. By default
  asyncpg sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
  RESET ALL`` on every release: one extra round trip per store call, measured
  at about +20% throughput on a primary-key lookup when skipped (DESIGN.md).
  Skipping it is safe only because this service keeps no session state: it
  never runs ``SET`` (only ``SET LOCAL``, if ever), takes only
  transaction-level advisory locks (``pg_advisory_xact_lock``, see
  ``migrations``), never ``LISTEN``s and never opens ``WITH HOLD`` cursors.
  asyncpg (>= 0.30) still rolls back a transaction left open and drops
  listener callbacks before calling a custom ``reset``, so an abandoned
  transaction cannot leak into the next borrower. Code that adds session
  state must pass ``reset_session=True``.
"""

from __future__ import annotations

import json

import asyncpg
from asyncpg import Connection, Record


async def _init_connection(conn: Connection[Record]) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: Connection[Record]) -> None:
    """Release-time reset that sends nothing (see the module docstring)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    reset_session: bool = False,
    statement_cache_size: int = 100,
    command_timeout: float | None = None,
) -> asyncpg.Pool[Record]:
    """Open a pool whose connections decode JSON and skip the session reset.

    The caller owns the pool and closes it (``await pool.close()``).

    Args:
        dsn: A ``postgresql://`` DSN (a unix socket via ``?host=/dir``).
        min_size: Connections opened up front and kept.
        max_size: Upper bound on open connections.
        reset_session: Use asyncpg's full reset on release; needed only if
            some code starts keeping session state.
        statement_cache_size: Prepared statements cached per connection; 0
            behind pgbouncer in transaction mode.
        command_timeout: Default per-statement timeout in seconds.

    Returns:
        The open pool.
    """
    pool: asyncpg.Pool[Record] = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=None if reset_session else _keep_session,
        statement_cache_size=statement_cache_size,
        command_timeout=command_timeout,
    )
    return pool
