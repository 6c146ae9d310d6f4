"""Benchmark of ``mcp-router serve --workers N``: CPU per RPC, and 1 vs 2 workers.

For one worker and for two (``WORKERS=1`` is today's single process; with 2
a supervisor, two workers, the ClickHouse host and a ``chroma run``), it
starts four servers in turn: the default cache (``l1``: the in-process L1
in front of Redis), the same with the L1 off (``redis``: every hit one Redis
GET), the same with ``CACHE_ENABLED=false`` (``nocache``: every call one
PostgreSQL query), and the bare grpc.aio RouterService (``bare``: a prebuilt
answer, no backend; forked the same way for two workers). It prints:

1. **server CPU per RPC** (µs) of ``GetExperiment`` for hit-L1, hit-Redis,
   miss (a fresh experiment row per call: GET, lease, PostgreSQL, SET),
   no-cache (the same hot keys on ``nocache``: one PostgreSQL query) and
   bare, from the server processes' own CPU counters (``/proc/<pid>/stat``
   utime + stime of the server and every process under it — supervisor,
   workers, ClickHouse host, Chroma server — not Redis or PostgreSQL); the
   figures do not depend on how loaded the machine is;
2. **1 vs 2 workers on hit traffic** at concurrency 64 over 8 channels (each
   its own TCP connection, so SO_REUSEPORT spreads them): RPS, p50/p99, the
   server CPU it used, and RPS per server-CPU-second. The load generator
   (one uvloop process) shares this 2-core machine with the server, so RPS
   is capped by the cores left to the server; RPS per CPU-second is not, and
   says what N workers give on N free cores (about N x that figure, as long
   as Redis and the clients keep up).

It uses Redis at 127.0.0.1:6379 and PostgreSQL at 127.0.0.1:5432 when they
answer (embedded ones otherwise), its own database and key namespace, and
removes them, and every process it started, on exit.

Run: ``.venv/bin/python bench/bench_workers.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from _common import (
    Channels,
    ServerProcess,
    call_many,
    free_port,
    table,
)
from _cpu import Cell, measure
from _data import bench_run, copy_rows
from _servers import bare_server, router_server
from _workloads import experiment_id, get_experiment

from mcprouter.v1 import router_service_pb2 as rs

HOT_KEYS = 1_000
CHANNELS = 8


@asynccontextmanager
async def running(
    server: ServerProcess, tmp: Path
) -> AsyncIterator[tuple[ServerProcess, Channels]]:
    """Start ``server``, wait until healthy, yield it with 8 channels; stop it after."""
    server.start(tmp)
    channels: Channels | None = None
    try:
        await server.wait_healthy(timeout_s=120)
        channels = Channels(server.target, CHANNELS)
        yield server, channels
    finally:
        if channels is not None:
            await channels.close()
        server.stop()


async def workers_reached(channels: Channels) -> dict[str, int]:
    """Channels per answering process (by the pid in Stats ``instance``)."""
    seen: dict[str, int] = {}
    for stub in channels.stubs:
        reply = await stub.Stats(rs.StatsRequest(), timeout=10)
        pid = reply.instance.split("/")[1] if reply.instance else "?"
        seen[pid] = seen.get(pid, 0) + 1
    return seen


async def warm(channels: Channels, requests: list[rs.RouteDataRequest]) -> None:
    """Read the working set three times through every channel (every worker's L1)."""
    for _ in range(3):
        for stub in channels.stubs:
            await call_many(stub, requests, 16)


def hot(i: int) -> rs.RouteDataRequest:
    return get_experiment(experiment_id(i % HOT_KEYS))


@dataclass
class Plan:
    """Durations and counts of a run."""

    duration_s: float
    cpu_concurrency: int
    load_concurrency: int
    miss_rows: int


async def run(args: argparse.Namespace) -> None:
    plan = Plan(
        duration_s=args.duration,
        cpu_concurrency=args.cpu_concurrency,
        load_concurrency=args.concurrency,
        miss_rows=args.miss_rows,
    )
    async with bench_run(args.postgres_dsn, args.redis_url, "workers", "-") as run:
        tmp, dsn, namespace = run.tmp, run.dsn, run.namespace
        common = {"POSTGRES_DSN": dsn, "REDIS_URL": run.backends.redis_url}
        cpu_rows: list[list[object]] = []
        load_rows: list[list[object]] = []
        responses = tmp / "responses.json"
        for workers in (1, 2):
            cells = await run_workers(workers, common, namespace, plan, tmp, dsn, responses)
            for mode in ("hit-l1", "hit-redis", "miss", "no-cache", "bare"):
                cell = cells[("cpu", mode)]
                cpu_rows.append(
                    [f"{mode}, {workers} worker{'s' if workers > 1 else ''}",
                     f"{cell.us_per_rpc:,.0f}", f"{cell.result.requests:,}",
                     f"{cell.result.rps:,.0f}", cell.result.errors]
                )  # fmt: skip
            for mode in ("hit-l1", "hit-redis", "bare"):
                cell = cells[("load", mode)]
                r = cell.result
                load_rows.append(
                    [f"{mode}, {workers} worker{'s' if workers > 1 else ''}",
                     f"{r.rps:,.0f}", f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}",
                     f"{cell.cpu_s / r.elapsed_s:.2f}", f"{cell.rps_per_cpu_s:,.0f}",
                     r.errors]
                )  # fmt: skip
        print(f"\n1. server CPU per RPC (GetExperiment, concurrency {plan.cpu_concurrency}, "
              f"{CHANNELS} channels, {plan.duration_s:g} s per cell)")  # fmt: skip
        print(table(["mode", "CPU µs/RPC", "RPCs", "RPS", "errors"], cpu_rows))
        print(f"\n2. hit traffic at concurrency {plan.load_concurrency} over {CHANNELS} "
              f"channels, {plan.duration_s:g} s per cell")  # fmt: skip
        print(
            table(
                ["mode", "RPS", "p50 ms", "p99 ms", "server cores", "RPS/CPU-s", "errors"],
                load_rows,
            )
        )


async def run_workers(
    workers: int,
    common: dict[str, str],
    namespace: str,
    plan: Plan,
    tmp: Path,
    dsn: str,
    responses: Path,
) -> dict[tuple[str, str], Cell]:
    """Every cell of one worker count: l1, redis, nocache and bare servers, one at a time."""
    cells: dict[tuple[str, str], Cell] = {}
    misses = [f"expw{workers}-{i}" for i in range(plan.miss_rows)]
    if workers == 1:
        await copy_rows(dsn, [experiment_id(i) for i in range(HOT_KEYS)], [])
    await copy_rows(dsn, misses, [], seed=workers)
    hot_requests = [hot(i) for i in range(HOT_KEYS)]
    configs = {
        "l1": {"KEY_NAMESPACE": f"{namespace}{workers}c:"},
        "redis": {"CACHE_LOCAL_MAX_ENTRIES": "0", "KEY_NAMESPACE": f"{namespace}{workers}r:"},
        "nocache": {"CACHE_ENABLED": "false", "KEY_NAMESPACE": f"{namespace}{workers}n:"},
    }
    mode_of = {"l1": "hit-l1", "redis": "hit-redis", "nocache": "no-cache"}
    for name, env in configs.items():
        settings = {"WORKERS": str(workers), **common, **env}
        server = router_server(f"{name}-{workers}", free_port(), settings, tmp)
        async with running(server, tmp) as (proc, channels):
            print(f"{proc.name}: channels per worker pid {await workers_reached(channels)}")
            # Without a cache, one pass through every channel opens the pools.
            await warm(channels, hot_requests[:100] if name == "nocache" else hot_requests)
            mode = mode_of[name]
            if name == "l1":  # the bare server answers this real reply
                reply = await channels.stubs[0].RouteData(hot(0), timeout=10)
                text = f'{{"get_experiment": "{reply.SerializeToString().hex()}"}}'
                await asyncio.to_thread(responses.write_text, text)
            cells[("cpu", mode)] = await measure(
                proc, channels, hot, concurrency=plan.cpu_concurrency, duration_s=plan.duration_s
            )
            if name == "nocache":  # CPU only: the 1-vs-2 table compares hit traffic
                continue
            cells[("load", mode)] = await measure(
                proc, channels, hot, concurrency=plan.load_concurrency, duration_s=plan.duration_s
            )
            if name == "l1":
                cells[("cpu", "miss")] = await measure(
                    proc,
                    channels,
                    lambda i: get_experiment(misses[i]),
                    concurrency=plan.cpu_concurrency,
                    duration_s=plan.duration_s,
                    max_requests=len(misses),
                )
    port = free_port()
    bare = bare_server(port, responses, tmp)
    bare.name = f"bare-{workers}"
    bare.env = {"BARE_WORKERS": str(workers)}
    async with running(bare, tmp) as (proc, channels):
        print(f"{proc.name}: channels per worker pid {await workers_reached(channels)}")
        await warm(channels, hot_requests[:100])
        cells[("cpu", "bare")] = await measure(
            proc, channels, hot, concurrency=plan.cpu_concurrency, duration_s=plan.duration_s
        )
        cells[("load", "bare")] = await measure(
            proc, channels, hot, concurrency=plan.load_concurrency, duration_s=plan.duration_s
        )
    return cells


async def cancelled_on_sigterm(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work``; SIGTERM cancels it, so every ``finally`` cleans up."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s cells (about a minute)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, default=64, help="of the 1-vs-2 cells")
    parser.add_argument("--cpu-concurrency", type=int, default=16, help="of the CPU cells")
    parser.add_argument("--miss-rows", type=int, default=20_000, help="fresh rows per worker count")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.quick:
        args.duration = 2.0
        args.miss_rows = 8_000
    # Ctrl-C cancels the run (the Runner's own handling); SIGTERM likewise.
    with (
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        suppress(asyncio.CancelledError, KeyboardInterrupt),
    ):
        runner.run(cancelled_on_sigterm(run(args)))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
