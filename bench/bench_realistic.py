"""The seed's table, measured: the stores made remote, realistic query shapes.

The product brief claims experiment lookup 50 ms -> 2 ms, assignment 30 -> 1,
profile 25 -> 1, event metrics 100 -> 3, 60-80% fewer database queries and
10x more concurrent requests. Those figures describe stores with a real
query cost, not a loopback primary-key lookup. This bench puts PostgreSQL
behind a delaying TCP proxy (``_proxy``: each chunk held RTT/2 each way, in
order, in a process of its own) and serves realistic query shapes: analytics
and hourly metrics over ~1 000 000 events in the server's embedded chDB, and
semantic search over 100 000 x 384 vectors in its embedded Chroma (both
in-process: no network is added, their query cost is real). Redis stays
local: a cache next to the service.

Three ``mcp-router serve`` processes (``_realistic_env``): no cache
(``CACHE_ENABLED=false``), Redis only (``CACHE_LOCAL_MAX_ENTRIES=0``) and
the default L1 in front of Redis. For each RTT it prints:

1. p50/p99 at concurrency 1 of GetExperiment, GetAssignment, GetUserProfile,
   GetEventMetrics (a closed hour), GetAnalytics (a day) and SemanticSearch
   on each server (warmed keys: hits on the caching servers), next to the
   seed's table;
2. capacity: the highest RPS whose p99 stays under ``--p99-bound-ms`` as the
   concurrency grows, no cache vs L1, on a PostgreSQL read mix, and the ratio
   (the seed's "10x more concurrent requests").

Then, once: a Zipf(1.1) read mix from a cold cache on the L1 server, and the
store queries it avoided (Stats), against the seed's "60-80% fewer database
queries".

Prints figures, asserts nothing. Removes its database, keys and processes on
exit, Ctrl-C and SIGTERM included.

Run: ``.venv/bin/python bench/bench_realistic.py [--quick] [--rtt-ms 1,5]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvloop
from _common import Channels, LoadResult, RequestFactory, call_many, run_closed_loop, table
from _realistic_env import (
    ANALYTICS_EXPERIMENT,
    COLLECTION,
    METRICS,
    SERVERS,
    VARIANTS,
    Env,
    Sizes,
    hours,
    probe_rtt,
    realistic_env,
)
from _realistic_mix import Capacity, run_capacity, run_zipf
from _servers import L1_MAX_AGE_S
from _workloads import KeyPlan

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.serve_status_pb2 import ServeStatus

# The seed's table: operation -> (label, without cache ms, with cache ms).
SEED: dict[str, tuple[str, float, float] | None] = {
    "get_experiment": ("experiment lookup", 50, 2),
    "get_assignment": ("assignment", 30, 1),
    "get_user_profile": ("profile", 25, 1),
    "get_event_metrics": ("event metrics", 100, 3),
    "get_analytics": None,
    "semantic_search": None,
}
OPERATIONS = tuple(SEED)
CACHED = ServeStatus.SERVE_STATUS_CACHED


@dataclass(frozen=True)
class Config:
    """Command-line settings."""

    rtts_ms: tuple[float, ...]
    p99_bound_ms: float
    steps: tuple[int, ...]
    cell_s: float
    cell_requests: int
    min_samples: int
    step_s: float
    step_tries: int
    zipf_windows: int
    zipf_requests: int
    zipf_s: float
    sizes: Sizes
    working_set: int
    search_keys: int
    channels: int
    postgres_dsn: str
    redis_url: str


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Read the command line (``--quick`` sets short defaults)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short cells, 20 000 vectors (~3 min)")
    p.add_argument("--rtt-ms", default="1,5", help="round trips added to PostgreSQL [1,5]")
    p.add_argument("--p99-bound-ms", type=float, default=50.0, help="capacity bound [50]")
    p.add_argument("--concurrency", default="1,4,16,32,64,128", help="capacity steps")
    p.add_argument("--cell", type=float, help="seconds per latency cell [3; quick 1]")
    p.add_argument("--cell-requests", type=int, default=2_000, help="cap per latency cell")
    p.add_argument("--step-tries", type=int, help="runs per step, lowest p99 kept [2; quick 1]")
    p.add_argument("--min-samples", type=int, default=20, help="calls per latency cell, at least")
    p.add_argument("--step", type=float, help="seconds per capacity step [4; quick 1.5]")
    p.add_argument("--zipf-windows", type=int, help="consecutive Zipf windows [3; quick 2]")
    p.add_argument("--zipf-requests", type=int, help="cap per Zipf window [40000; quick 8000]")
    p.add_argument("--zipf-duration", type=float, help="seconds per Zipf window [20; quick 5]")
    p.add_argument("--experiments", type=int, default=1_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--vectors", type=int, help="Chroma collection size [100000; quick 20000]")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--working-set", type=int, default=1_000, help="keys of the hit cells")
    p.add_argument("--search-keys", type=int, default=100, help="query vectors of the hit cells")
    p.add_argument("--channels", type=int, default=4, help="grpc.aio channels per server")
    p.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    a = p.parse_args(argv)

    def pick(value: float | None, full: float, quick: float) -> float:
        return value if value is not None else (quick if a.quick else full)

    return Config(
        rtts_ms=tuple(float(r) for r in a.rtt_ms.split(",")),
        p99_bound_ms=a.p99_bound_ms,
        steps=tuple(int(c) for c in a.concurrency.split(",")),
        cell_s=pick(a.cell, 3.0, 1.0),
        cell_requests=a.cell_requests,
        min_samples=a.min_samples,
        step_s=pick(a.step, 4.0, 1.5),
        step_tries=int(pick(a.step_tries, 2, 1)),
        zipf_windows=int(pick(a.zipf_windows, 3, 2)),
        zipf_requests=int(pick(a.zipf_requests, 40_000, 8_000)),
        zipf_s=pick(a.zipf_duration, 20.0, 5.0),
        sizes=Sizes(
            experiments=a.experiments,
            users=a.users,
            events=a.events,
            vectors=int(pick(a.vectors, 100_000, 20_000)),
            dim=a.dim,
        ),
        working_set=min(a.working_set, a.experiments, a.users),
        search_keys=a.search_keys,
        channels=a.channels,
        postgres_dsn=a.postgres_dsn,
        redis_url=a.redis_url,
    )


@dataclass(frozen=True)
class Requests:
    """Warm-key request factories of every operation, and their working sets."""

    factories: dict[str, RequestFactory]
    sizes: dict[str, int]

    def warm(self, op: str) -> list[rs.RouteDataRequest]:
        """One request per working-set key of ``op``."""
        return [self.factories[op](i) for i in range(self.sizes[op])]


def requests(cfg: Config, env: Env) -> Requests:
    """PostgreSQL keys from ``KeyPlan``; 96 closed hours; one day; random query vectors."""
    plan = KeyPlan(cfg.sizes.experiments, cfg.sizes.users, cfg.working_set, 0, 0, 0)
    metrics = []
    for hour in hours(env.day):
        for variant in VARIANTS:
            for metric in METRICS:
                op = rs.GetEventMetricsOperation(
                    experiment_id=ANALYTICS_EXPERIMENT, variant=variant, metric=metric
                )
                op.hour.FromDatetime(hour)
                metrics.append(rs.RouteDataRequest(get_event_metrics=op))
    analytics = rs.GetAnalyticsOperation(experiment_id=ANALYTICS_EXPERIMENT)
    analytics.day.FromDatetime(env.day)
    day = rs.RouteDataRequest(get_analytics=analytics)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((cfg.search_keys, cfg.sizes.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    searches = [
        rs.RouteDataRequest(
            semantic_search=rs.SemanticSearchOperation(
                collection=COLLECTION, embedding=v.tolist(), k=10
            )
        )
        for v in vectors
    ]
    factories: dict[str, RequestFactory] = {
        op: plan.hit_factory(op) for op in ("get_experiment", "get_assignment", "get_user_profile")
    }
    factories["get_event_metrics"] = lambda n: metrics[n % len(metrics)]
    factories["get_analytics"] = lambda n: day
    factories["semantic_search"] = lambda n: searches[n % len(searches)]
    sizes = {op: cfg.working_set for op in factories}
    sizes.update(get_event_metrics=len(metrics), get_analytics=1, semantic_search=len(searches))
    return Requests(factories, sizes)


async def prime(channels: Channels, reqs: Requests, op: str, server: str) -> int:
    """Untimed reads of ``op``'s working set: once on redis, twice on l1 (admits into the L1).

    On nocache a few calls open the pool's connections. Returns the errors.
    """
    if server == "nocache":
        warm = [reqs.factories[op](i) for i in range(8)]
        return await call_many(channels.stubs[0], warm, 1)
    errors = 0
    for _ in range(2 if server == "l1" else 1):
        errors += await call_many(channels.stubs[0], reqs.warm(op), 16)
    return errors


def ms(us: float) -> str:
    """Microseconds as milliseconds, 2 decimals (3 under 1 ms)."""
    return f"{us / 1000:.3f}" if us < 1000 else f"{us / 1000:.2f}"


async def latency_cell(channels: Channels, factory: RequestFactory, cfg: Config) -> LoadResult:
    """Concurrency 1 for ``cell_s`` seconds, extended (up to 10 s more) to ``min_samples`` calls.

    A no-cache analytics query over a million events takes a good part of a
    second: a fixed short cell would leave a p50 of two or three calls.
    """
    result = await run_closed_loop(
        channels.stubs,
        factory,
        concurrency=1,
        duration_s=cfg.cell_s,
        max_requests=cfg.cell_requests,
    )
    missing = cfg.min_samples - result.requests
    if missing > 0 and result.requests:
        more = await run_closed_loop(
            channels.stubs,
            lambda n: factory(result.requests + n),
            concurrency=1,
            duration_s=min(10.0, missing * result.elapsed_s / result.requests),
            max_requests=missing,
        )
        result.latencies_us = sorted(result.latencies_us + more.latencies_us)
        result.requests += more.requests
        result.errors += more.errors
        result.elapsed_s += more.elapsed_s
        for status, count in more.statuses.items():
            result.statuses[status] = result.statuses.get(status, 0) + count
        for code, count in more.error_codes.items():
            result.error_codes[code] = result.error_codes.get(code, 0) + count
    return result


async def run_latency(env: Env, reqs: Requests, cfg: Config, rtt: float) -> None:
    """p50/p99 at concurrency 1 of every operation on every server; the two tables."""
    cells: dict[tuple[str, str], LoadResult] = {}
    for op in OPERATIONS:
        for server in SERVERS:
            channels = env.channels[server]
            await prime(channels, reqs, op, server)
            cells[(op, server)] = await latency_cell(channels, reqs.factories[op], cfg)
    seed_rows, detail_rows = [], []
    for op in OPERATIONS:
        seed = SEED[op]
        nocache, redis, l1 = (cells[(op, s)] for s in SERVERS)
        ours = [f"{nocache.p(50) / r.p(50):.0f}x" if r.p(50) else "-" for r in (l1, redis)]
        seed_cols = ["-", "-", "-"]
        if seed is not None:
            seed_cols = [f"{seed[1]:g}", f"{seed[2]:g}", f"{seed[1] / seed[2]:.0f}x"]
        label = f"{op} ({seed[0]})" if seed else op
        seed_rows.append(
            [label, *seed_cols, ms(nocache.p(50)), ms(redis.p(50)), ms(l1.p(50)), *ours]
        )
        for server in SERVERS:
            r = cells[(op, server)]
            cached = r.statuses.get(CACHED, 0)
            errors = ",".join(f"{k}:{v}" for k, v in r.error_codes.items()) or "0"
            detail_rows.append(
                [
                    op,
                    server,
                    r.requests,
                    ms(r.p(50)),
                    ms(r.p(99)),
                    f"{cached / max(r.requests, 1):.0%}",
                    errors,
                ]
            )
    print(f"\n== Seed's table vs ours, PostgreSQL RTT +{rtt:g} ms, concurrency 1, p50 ms ==")
    headers = ["operation", "seed no cache", "seed cache", "seed speed-up"]
    headers += ["ours no cache", "ours Redis", "ours L1", "speed-up (no cache / L1)"]
    headers += ["(no cache / Redis)"]
    print(table(headers, seed_rows))
    print(
        f"\n-- details (RTT +{rtt:g} ms): p50/p99 per server; cached = answers SERVE_STATUS_CACHED"
    )
    print(
        table(
            ["operation", "server", "requests", "p50 ms", "p99 ms", "cached", "errors"], detail_rows
        )
    )


def describe(cfg: Config) -> str:
    """What runs, in a few lines."""
    s = cfg.sizes
    rtts = ", ".join(f"{r:g}" for r in cfg.rtts_ms)
    return (
        f"mcp-router realistic benchmark: PostgreSQL behind a delaying proxy, RTT +{rtts} ms "
        "(a process of its own; the RTT it adds is measured below); Redis local (a cache "
        "next to the service, no delay);\nClickHouse (chDB, "
        f"{s.events:,} events in one day) and Chroma ({s.vectors:,} x {s.dim}, cosine) embedded "
        "in each server process: no proxy, their query cost is real.\n"
        "servers: nocache (CACHE_ENABLED=false), redis (CACHE_LOCAL_MAX_ENTRIES=0), l1 "
        f"(defaults: L1 entries served for at most {L1_MAX_AGE_S:g} s); POSTGRES_POOL_SIZE and "
        "CLICKHOUSE_QUERY_WORKERS at their defaults.\n"
        f"latency cells: concurrency 1, {cfg.cell_s:g} s or {cfg.cell_requests:,} requests; "
        f"capacity steps {cfg.steps} x {cfg.step_s:g} s (best p99 of {cfg.step_tries}), "
        f"p99 bound {cfg.p99_bound_ms:g} ms."
    )


async def main_async(cfg: Config) -> None:
    """Set up, run every section per RTT, then the Zipf mix; tear down."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mcprouter-realistic-") as folder:
        tmp = Path(folder)
        async with realistic_env(
            cfg.sizes, cfg.postgres_dsn, cfg.redis_url, cfg.channels, cfg.rtts_ms[0], tmp
        ) as env:
            reqs = requests(cfg, env)
            # Stores the assignments, so that nocache reads them with one SELECT.
            await call_many(env.channels["l1"].stubs[0], reqs.warm("get_assignment"), 32)
            print(f"setup done in {time.perf_counter() - started:.0f} s; measuring", flush=True)
            capacity = Capacity(
                cfg.steps, cfg.step_s, cfg.step_tries, cfg.p99_bound_ms, cfg.working_set
            )
            for rtt in cfg.rtts_ms:
                env.proxy.set_rtt(rtt)
                probed = await probe_rtt(env.proxied_dsn)
                print(
                    f"\n######## PostgreSQL RTT +{rtt:g} ms: SELECT 1 through the proxy takes "
                    f"{probed:.2f} ms (p50, loopback alone ~0.1 ms); load average "
                    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                    flush=True,
                )
                await run_latency(env, reqs, cfg, rtt)
                await run_capacity(env, reqs.factories, capacity, rtt)
            await run_zipf(
                env, cfg.sizes, cfg.zipf_windows, cfg.zipf_requests, cfg.zipf_s, cfg.rtts_ms[-1]
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: Ctrl-C and SIGTERM cancel the run, so every cleanup runs."""
    cfg = parse_args(argv)
    print(describe(cfg), flush=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            await main_async(cfg)

        with suppress(KeyboardInterrupt, asyncio.CancelledError):
            runner.run(run())


if __name__ == "__main__":
    main()
