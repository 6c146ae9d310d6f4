"""The ClickHouse cluster DDL parses (through chDB's real parser) and keeps the schema's shape."""

from __future__ import annotations

import re
from pathlib import Path

import chdb

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DDL = REPO / "deploy" / "clickhouse" / "distributed.sql"
SINGLE_DDL = REPO / "service" / "mcprouter" / "server" / "clickhouse" / "schema" / "0001_events.sql"


def statements(path: Path) -> list[str]:
    body = "\n".join(
        line for line in path.read_text().splitlines() if not line.strip().startswith("--")
    )
    return [s.strip() for s in body.split(";") if s.strip()]


def formatted(statement: str) -> str:
    """ClickHouse's own canonical form of a statement (raises if it does not parse)."""
    quoted = statement.replace("\\", "\\\\").replace("'", "\\'")
    return str(chdb.query(f"SELECT formatQuery('{quoted}')", "TSVRaw").data()).strip()


def shape(canonical: str) -> tuple[str, str, str]:
    """Columns, PARTITION BY and ORDER BY of a canonical CREATE TABLE."""
    columns = canonical[canonical.index("(") : canonical.index(")\nENGINE")]
    partition = re.search(r"PARTITION BY (.+)", canonical)
    order = re.search(r"ORDER BY (.+)", canonical)
    assert partition and order, canonical
    return columns, partition.group(1).strip(), order.group(1).strip()


def test_the_cluster_ddl_parses_and_matches_the_single_node_schema() -> None:
    local, distributed = (formatted(s) for s in statements(CLUSTER_DDL))
    (single,) = (formatted(s) for s in statements(SINGLE_DDL))
    assert "ON CLUSTER" in local and "ReplicatedReplacingMergeTree" in local
    assert "ENGINE = Distributed(mcprouter, default, events_local" in distributed
    assert shape(local) == shape(single)
