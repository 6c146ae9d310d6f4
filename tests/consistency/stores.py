"""The stores read directly, behind the service's back: the truth the cache must match.

chDB allows one data path per process, so each instance's ClickHouse data is
counted by a short subprocess (``python -m tests.consistency.stores PATH``),
after that instance stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.consistency import protocol as p

COUNT_TIMEOUT_S = 120


@dataclass
class Truth:
    """Entity -> (state, token) as the stores hold it; absent entities are missing."""

    states: dict[str, tuple[int, str]] = field(default_factory=dict)

    def get(self, entity: str) -> tuple[int, str]:
        return self.states.get(entity, (0, ""))


async def postgres_truth(dsn: str) -> Truth:
    conn = await asyncpg.connect(dsn)
    try:
        truth = Truth()
        for row in await conn.fetch("SELECT experiment_id, name, version FROM experiments"):
            truth.states[p.experiment_entity(row[0])] = (row[2], row[1])
        for row in await conn.fetch(
            "SELECT user_id, attributes->>'tok', version FROM user_profiles"
        ):
            truth.states[p.user_entity(row[0])] = (row[2], row[1] or "")
        for row in await conn.fetch(
            "SELECT experiment_id, user_id, variant, bucket FROM assignments"
        ):
            truth.states[p.assignment_entity(row[0], row[1])] = (
                1,
                p.assignment_token(row[2], row[3]),
            )
        return truth
    finally:
        await conn.close()


def chroma_truth(url: str, items: list[str]) -> Truth:
    import chromadb

    host, _, port = url.removeprefix("http://").partition(":")
    client = chromadb.HttpClient(host=host, port=int(port))
    got: Any = client.get_collection(p.COLLECTION).get(ids=items, include=["metadatas"])
    truth = Truth()
    for item_id, meta in zip(got["ids"], got["metadatas"], strict=True):
        truth.states[p.item_entity(item_id)] = (int(meta["seq"]), str(meta["tok"]))
    return truth


def count_events(path: Path) -> dict[str, tuple[int, int]]:
    """Event id -> (rows after FINAL, raw rows) in one stopped instance's chDB."""
    if not path.exists():
        return {}
    done = subprocess.run(
        [sys.executable, "-m", "tests.consistency.stores", str(path)],
        capture_output=True,
        text=True,
        timeout=COUNT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"counting events in {path} failed:\n{done.stderr[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: (int(v[0]), int(v[1])) for k, v in raw.items()}


def _count_here(path: str) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    try:
        final: dict[str, int] = {
            row[0]: row[1]
            for row in client.query(
                "SELECT event_id, count() FROM events FINAL GROUP BY event_id"
            ).result_rows
        }
        raw: dict[str, int] = {
            row[0]: row[1]
            for row in client.query(
                "SELECT event_id, count() FROM events GROUP BY event_id"
            ).result_rows
        }
    finally:
        client.close()
    print(json.dumps({k: [final.get(k, 0), raw[k]] for k in raw}))


if __name__ == "__main__":
    _count_here(sys.argv[1])
