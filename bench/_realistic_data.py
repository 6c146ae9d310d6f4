"""Bulk data of the realistic benchmark: events into chDB, vectors into Chroma.

Run as a subprocess (``python bench/_realistic_data.py events|vectors ...``):
chDB hosts one engine per process and keeps it until the process exits, so
the bench process never opens one itself. Each command fills a folder once;
the bench then copies it into every server's ``DATA_DIR`` (``clickhouse``,
``chroma``) before the servers start, which is much faster than loading
three times.

- ``events PATH EXPERIMENT DAY N``: N events of one experiment over one UTC
  day (2 variants, 200 000 users, every 23rd a conversion), one
  column-oriented insert through the server's own ``ClickHouseStore``
  (migrations included). ``inserted_at`` is set to the event's time, so the
  server's start-up settling of recently stored events finds none of them.
- ``vectors PATH N DIM``: N random unit vectors ``v0..`` into the collection
  ``bench-vectors`` through the server's own ``ChromaStore`` (cosine).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _realistic_env import COLLECTION, VARIANTS

from mcprouter.server.chroma.store import open_chroma
from mcprouter.server.clickhouse.processor import CONVERSION_EVENT_TYPE
from mcprouter.server.clickhouse.store import EVENT_COLUMNS, EVENTS_TABLE, open_clickhouse
from mcprouter.v1 import search_pb2 as search

USERS = 200_000


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of dimension ``dim`` (float32)."""
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def load_events(path: Path, experiment: str, day: datetime, n: int) -> None:
    """One insert of ``n`` events spread evenly over ``day`` (``path`` absolute)."""
    store = await open_clickhouse("chdb://" + str(path))
    try:
        await store.migrate()
        day_ms = int(day.timestamp() * 1000)
        stamps = [day_ms + (i * 86_399_999) // n for i in range(n)]
        columns = [
            [f"e{i}" for i in range(n)],
            [experiment] * n,
            [VARIANTS[i % 2] for i in range(n)],
            [f"u{(i * 7919) % USERS}" for i in range(n)],
            [CONVERSION_EVENT_TYPE if i % 23 == 0 else "exposure" for i in range(n)],
            [float(i % 50) for i in range(n)],
            stamps,
            stamps,
        ]
        names = [*EVENT_COLUMNS, "inserted_at"]
        await store.run(
            lambda c: c.insert(EVENTS_TABLE, columns, column_names=names, column_oriented=True)
        )
    finally:
        await store.close()


async def load_vectors(path: Path, n: int, dim: int, batch: int = 5_000) -> None:
    """``n`` unit vectors in batches of ``batch`` upserts."""
    store = await open_chroma(None, path, timeout_s=600)
    rng = np.random.default_rng(2026)
    try:
        for start in range(0, n, batch):
            vectors = unit_vectors(rng, min(batch, n - start), dim)
            items = [
                search.EmbeddingItem(id=f"v{start + i}", embedding=v.tolist())
                for i, v in enumerate(vectors)
            ]
            await store.upsert(COLLECTION, items)
    finally:
        await store.close()


def main(argv: list[str]) -> None:
    """``events PATH EXPERIMENT DAY N`` or ``vectors PATH N DIM``; prints the seconds taken."""
    started = time.perf_counter()
    if argv[0] == "events":
        day = datetime.fromisoformat(argv[3]).replace(tzinfo=UTC)
        asyncio.run(load_events(Path(argv[1]).resolve(), argv[2], day, int(argv[4])))
    elif argv[0] == "vectors":
        asyncio.run(load_vectors(Path(argv[1]), int(argv[2]), int(argv[3])))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    print(f"{time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
