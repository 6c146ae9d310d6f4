"""Versioned schema migrations of the ClickHouse event store.

Migrations are the ``NNNN_name.sql`` files of this package, applied in name
order; the file stem is the version, recorded in ``schema_migrations``. A
file may hold several statements separated by ``;`` at the end of a line
(ClickHouse runs one statement per query). A released file is never edited:
change the schema with a new one.

ClickHouse has no transactions and no advisory locks, so safety comes from
idempotence instead:

* every statement is written to be re-runnable (``IF NOT EXISTS``), so a
  migration interrupted half-way is simply applied again on the next start;
* the version row is written after the statements succeeded, into a
  ``ReplacingMergeTree`` keyed by version, so two processes that migrate at
  once both succeed and leave one row per version after merges (reads use
  ``DISTINCT``);
* applying is idempotent: a second run applies nothing and returns ``[]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


@dataclass(frozen=True, slots=True)
class ClickHouseMigration:
    """One SQL file: its version (the file stem) and its statements."""

    version: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """Split a migration file into statements, dropping ``--`` comment lines."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    text = "\n".join(lines)
    return tuple(part.strip() for part in text.split(";\n") if part.strip().rstrip(";"))


def available_migrations() -> list[ClickHouseMigration]:
    """Every migration shipped with the package, in the order they apply."""
    files = sorted(
        (e for e in resources.files(__name__).iterdir() if e.is_file() and e.name.endswith(".sql")),
        key=lambda e: e.name,
    )
    return [
        ClickHouseMigration(
            e.name.removesuffix(".sql"), split_statements(e.read_text(encoding="utf-8"))
        )
        for e in files
    ]


def applied_versions(client: Client) -> set[str]:
    """The versions recorded in ``schema_migrations`` (creating the table if needed)."""
    client.command(_CREATE_TABLE)
    rows = client.query("SELECT DISTINCT version FROM schema_migrations").result_rows
    return {str(row[0]) for row in rows}


def apply_clickhouse_migrations(client: Client) -> list[str]:
    """Apply every pending migration (blocking; run it off the event loop).

    Args:
        client: A clickhouse-connect client no other thread is using.

    Returns:
        The versions this call applied, in order; ``[]`` when up to date.
    """
    done = applied_versions(client)
    applied: list[str] = []
    for migration in available_migrations():
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.rstrip(";"))
        client.command(
            "INSERT INTO schema_migrations (version) VALUES ({version:String})",
            parameters={"version": migration.version},
        )
        applied.append(migration.version)
    return applied
