"""Benchmark of the PostgreSQL operations of RouteData through the Redis cache.

Starts three server subprocesses (the real mcp-router with the cache, the real
one with ``CACHE_ENABLED=false``, and a bare grpc.aio RouterService that answers
a prebuilt response), loads experiments and 100 000 user profiles with COPY
into a database of its own, and prints:

1. RPS and p50/p99 of GetExperiment, GetUserProfile and GetAssignment at each
   concurrency for: cache hit, cache miss, caching disabled, bare server;
2. a Zipf(1.1) read workload over every profile, starting from a cold cache
   (hit rate and store queries avoided, from the server's Stats RPC);
3. a 64-way single-flight stampede on cold experiment keys (store loads per key).

It prints figures and asserts nothing. Every process, the database and the
Redis keys it made are removed on exit, Ctrl-C included.

Run: ``.venv/bin/python bench/bench_postgres.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import uvloop
from _common import (
    REPO,
    Channels,
    LoadResult,
    RequestFactory,
    ServerProcess,
    call_many,
    free_port,
    run_closed_loop,
    table,
)
from _data import copy_rows, create_database, drop_database, open_backends, unlink_matching
from _profile import profile_server
from _workloads import OPERATIONS, KeyPlan, Zipf, get_experiment, ideal_hit_rate
from _workloads import get_user_profile as profile_request

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

MODES = ("hit", "miss", "no-cache", "bare")


@dataclass(frozen=True)
class Config:
    """Command-line settings."""

    duration_s: float
    max_requests: int
    miss_cap: int
    concurrency: tuple[int, ...]
    channels: int
    experiments: int
    users: int
    working_set: int
    zipf_requests: int
    zipf_duration_s: float
    stampede_keys: int
    stampede_width: int
    profile_s: float
    rounds: int
    postgres_dsn: str
    redis_url: str


@dataclass
class Servers:
    """The three servers under test and a few channels to each."""

    cached: ServerProcess
    nocache: ServerProcess
    bare: ServerProcess
    channels: dict[str, Channels]


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Read the command line (``--quick`` sets short defaults)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short cells (< 90 s in all)")
    p.add_argument("--duration", type=float, help="seconds per cell [2.5; quick 0.6]")
    p.add_argument("--max-requests", type=int, default=50_000, help="request cap per cell")
    p.add_argument("--miss-requests", type=int, help="cap per miss cell [6000; quick 2000]")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    p.add_argument("--channels", type=int, default=4, help="grpc.aio channels per server")
    p.add_argument("--experiments", type=int, default=1_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--working-set", type=int, default=1_000, help="keys of the hit cells")
    p.add_argument("--zipf-requests", type=int, help="cap per Zipf window [60000; quick 8000]")
    p.add_argument("--zipf-duration", type=float, help="seconds per Zipf window [40; quick 6]")
    p.add_argument("--stampede-keys", type=int, help="cold keys stampeded [20; quick 10]")
    p.add_argument("--stampede-width", type=int, default=64, help="concurrent calls per key")
    p.add_argument("--profile", type=float, help="py-spy seconds on a hit run [10; quick 0]")
    p.add_argument("--rounds", type=int, help="alternated ratio rounds [5; quick 2]")
    p.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    a = p.parse_args(argv)
    q = a.quick

    def pick(value: float | None, full: float, quick: float) -> float:
        return value if value is not None else (quick if q else full)

    return Config(
        duration_s=pick(a.duration, 2.5, 0.6),
        max_requests=a.max_requests,
        miss_cap=int(pick(a.miss_requests, 6_000, 2_000)),
        concurrency=tuple(int(c) for c in a.concurrency.split(",")),
        channels=a.channels,
        experiments=a.experiments,
        users=a.users,
        working_set=min(a.working_set, a.experiments, a.users),
        zipf_requests=int(pick(a.zipf_requests, 60_000, 8_000)),
        zipf_duration_s=pick(a.zipf_duration, 40.0, 6.0),
        stampede_keys=int(pick(a.stampede_keys, 20, 10)),
        stampede_width=a.stampede_width,
        profile_s=pick(a.profile, 10.0, 0.0),
        rounds=int(pick(a.rounds, 5, 2)),
        postgres_dsn=a.postgres_dsn,
        redis_url=a.redis_url,
    )


def key_plan(cfg: Config) -> KeyPlan:
    """The keys this configuration needs."""
    return KeyPlan(
        experiments=cfg.experiments,
        users=cfg.users,
        working_set=cfg.working_set,
        miss_cap=cfg.miss_cap,
        cells=len(cfg.concurrency),
        stampede_keys=cfg.stampede_keys,
    )


def router_server(name: str, port: int, env: dict[str, str], tmp: Path) -> ServerProcess:
    """An ``mcp-router serve`` subprocess (its own DATA_DIR; LOG_LEVEL=WARNING)."""
    data_dir = tmp / name
    data_dir.mkdir()
    env = {
        "LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "MIGRATE_ON_START": "true",
        "SHUTDOWN_GRACE_S": "1",
        **env,
    }
    argv = [str(REPO / ".venv/bin/mcp-router"), "serve"]
    return ServerProcess(name, argv, env, port, tmp / f"{name}.log")


def bare_server(port: int, responses: Path, tmp: Path) -> ServerProcess:
    """The bare RouterService subprocess."""
    argv = [sys.executable, str(Path(__file__).with_name("_bare_server.py")), str(port)]
    return ServerProcess("bare", [*argv, str(responses)], {}, port, tmp / "bare.log")


async def sample_responses(stub: Channels, plan: KeyPlan, path: Path) -> None:
    """Save one real answer per operation, for the bare server to replay."""
    answers = {}
    for op in OPERATIONS:
        request = plan.hit_factory(op)(0)
        answers[op] = (await stub.stubs[0].RouteData(request, timeout=10)).SerializeToString().hex()
    await asyncio.to_thread(path.write_text, json.dumps(answers))


async def warm_server(channels: Channels, plan: KeyPlan, seconds: float) -> None:
    """Open connections and pools (client, gRPC, PostgreSQL) before measuring."""
    await run_closed_loop(
        channels.stubs,
        plan.hit_factory("get_experiment"),
        concurrency=64,
        duration_s=seconds,
        max_requests=100_000,
    )


async def measure(channels: Channels, factory: RequestFactory, c: int, cfg: Config) -> LoadResult:
    """One bounded closed-loop cell."""
    return await run_closed_loop(
        channels.stubs,
        factory,
        concurrency=c,
        duration_s=cfg.duration_s,
        max_requests=cfg.max_requests,
    )


def fmt_row(op: str, mode: str, c: int, r: LoadResult) -> list[object]:
    """A table row of one cell."""
    statuses = ",".join(
        f"{ServeStatus.Name(ServeStatus.ValueType(s))[13:]}:{n}"
        for s, n in sorted(r.statuses.items())
    )
    errors = ",".join(f"{k}:{v}" for k, v in r.error_codes.items()) or "0"
    latency = [f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}"]
    return [op, mode, c, r.requests, f"{r.rps:,.0f}", *latency, errors, statuses]


async def run_matrix(
    srv: Servers, plan: KeyPlan, cfg: Config
) -> dict[tuple[str, str, int], LoadResult]:
    """Every (operation, mode, concurrency) cell; prints each row as it completes."""
    results: dict[tuple[str, str, int], LoadResult] = {}
    headers = [
        "operation",
        "mode",
        "conc",
        "requests",
        "RPS",
        "p50 ms",
        "p99 ms",
        "errors",
        "served",
    ]
    rows: list[list[object]] = []
    for op in OPERATIONS:
        await call_many(srv.channels["cached"].stubs[0], plan.warm_requests(op), 32)
        for mode in MODES:
            for cell, c in enumerate(cfg.concurrency):
                factory = plan.miss_factory(op, cell) if mode == "miss" else plan.hit_factory(op)
                server = {"hit": "cached", "miss": "cached"}.get(mode, mode)
                r = await measure(srv.channels[server], factory, c, cfg)
                results[(op, mode, c)] = r
                rows.append(fmt_row(op, mode, c, r))
                print(f"  {op:<17} {mode:<8} c={c:<3} {r.rps:>8,.0f} RPS", flush=True)
    print("\n== RouteData over gRPC (closed loop; latency per call) ==")
    print(table(headers, rows))
    return results


def ratio(a: float, b: float) -> float:
    """a / b, 0 when b is 0."""
    return a / b if b else 0.0


async def run_ratios(srv: Servers, plan: KeyPlan, cfg: Config) -> None:
    """hit, bare and no-cache cells alternated for a few rounds; medians and ratios.

    The machine is shared and noisy: interleaving the three servers and taking
    medians keeps a burst of background load from landing on one side only.
    """
    c = max(cfg.concurrency)
    rows = []
    for op in OPERATIONS:
        rps: dict[str, list[float]] = {"hit": [], "bare": [], "no-cache": []}
        for _ in range(cfg.rounds):
            for mode, values in rps.items():
                channels = srv.channels["cached" if mode == "hit" else mode]
                values.append((await measure(channels, plan.hit_factory(op), c, cfg)).rps)
        per_round = [ratio(h, b) for h, b in zip(rps["hit"], rps["bare"], strict=True)]
        hit, bare, nocache = (statistics.median(rps[m]) for m in ("hit", "bare", "no-cache"))
        rows.append([op, f"{hit:,.0f}", f"{bare:,.0f}", f"{nocache:,.0f}"])
        rows[-1] += [f"{ratio(hit, bare):.0%}", f"{min(per_round):.0%}-{max(per_round):.0%}"]
        rows[-1].append(f"{ratio(hit, nocache):.2f}x")
    print(
        f"\n== Ratios at concurrency {c}: hit / bare / no-cache alternated, "
        f"{cfg.rounds} rounds, median RPS (target: hit >= 70% of bare) =="
    )
    headers = ["operation", "hit RPS", "bare RPS", "no-cache RPS", "hit/bare"]
    print(table([*headers, "per-round", "hit/no-cache"], rows))


def type_stats(stats: rs.StatsResponse, data_type: DataType.ValueType) -> rs.DataTypeStats:
    """The per-type counters of ``data_type``."""
    for entry in stats.data_types:
        if entry.data_type == data_type:
            return entry
    return rs.DataTypeStats(data_type=data_type)


def diff(after: rs.DataTypeStats, before: rs.DataTypeStats, field: str) -> int:
    """Counter increase between two snapshots."""
    return int(getattr(after, field)) - int(getattr(before, field))


async def zipf_window(
    channels: Channels, sequence: list[str], seen: set[str], label: str, cfg: Config
) -> list[object]:
    """One Zipf window: load, Stats diff and the ideal (unbounded cache) hit rate."""
    before = await channels.stats()
    r = await run_closed_loop(
        channels.stubs,
        lambda n: profile_request(sequence[n]),
        concurrency=64,
        duration_s=cfg.zipf_duration_s,
        max_requests=len(sequence),
    )
    after = await channels.stats()
    sent = sequence[: r.requests + r.errors]
    ideal = ideal_hit_rate(sent, seen)
    seen.update(sent)
    dt = DataType.DATA_TYPE_USER_PROFILE
    b, a = type_stats(before, dt), type_stats(after, dt)
    hits, misses, loads = diff(a, b, "hits"), diff(a, b, "misses"), diff(a, b, "loads")
    avoided = after.store_queries_avoided - before.store_queries_avoided
    reads = avoided + misses
    share = f"{avoided / reads:.1%}" if reads else "-"
    per_request = f"{1 - loads / max(r.requests, 1):.1%}"
    latency = [f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}"]
    figures = [hits, misses, loads, share, per_request, f"{ideal:.1%}"]
    return [label, r.requests, f"{r.rps:,.0f}", *latency, *figures]


async def run_zipf(srv: Servers, cfg: Config, namespace: str, redis_url: str) -> None:
    """Zipf(1.1) GetUserProfile over every profile, from a cold cache, two windows."""
    removed = await unlink_matching(redis_url, namespace + "*")
    zipf = Zipf(cfg.users, 1.1)
    seen: set[str] = set()
    rows = []
    for label in ("cold start", "continued"):
        sequence = zipf.sequence(cfg.zipf_requests)
        rows.append(await zipf_window(srv.channels["cached"], sequence, seen, label, cfg))
    print(
        f"\n== Zipf(1.1) GetUserProfile over {cfg.users:,} keys, concurrency 64, cache emptied "
        f"first ({removed:,} keys removed) ==\n   avoided = Stats store_queries_avoided / "
        "(avoided + misses); 1-loads/req = store queries avoided per request; ideal = best "
        "any cache could do on this window (compulsory misses only; target >= 90%)"
    )
    headers = ["window", "requests", "RPS", "p50 ms", "p99 ms", "hits", "misses", "loads"]
    print(table([*headers, "avoided", "1-loads/req", "ideal"], rows))


async def stampede(channels: Channels, exp: str, width: int) -> list[int]:
    """``width`` concurrent GetExperiment of one cold key; Stats diffs of the experiment type."""
    before = await channels.stats()
    calls = [
        channels.stubs[i % len(channels.stubs)].RouteData(get_experiment(exp), timeout=30)
        for i in range(width)
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    after = await channels.stats()
    b = type_stats(before, DataType.DATA_TYPE_EXPERIMENT)
    a = type_stats(after, DataType.DATA_TYPE_EXPERIMENT)
    errors = sum(isinstance(x, BaseException) for x in answers)
    fields = ("loads", "misses", "hits", "lease_waits")
    return [diff(a, b, f) for f in fields] + [errors]


async def run_stampedes(srv: Servers, plan: KeyPlan, cfg: Config) -> None:
    """The single-flight stampede on each cold stampede key."""
    from _workloads import stampede_experiment_id

    counts: list[list[int]] = []
    for i in range(plan.stampede_keys):
        exp = stampede_experiment_id(i)
        counts.append(await stampede(srv.channels["cached"], exp, cfg.stampede_width))
    rows = [[stampede_experiment_id(i), *c] for i, c in enumerate(counts)]
    loads = [c[0] for c in counts]
    print(f"\n== Single-flight: {cfg.stampede_width} concurrent GetExperiment per cold key ==")
    print(table(["key", "loads", "misses", "hits", "lease_waits", "errors"], rows))
    print(
        f"store loads per key: {sum(loads) / max(len(loads), 1):.2f} over {len(loads)} keys "
        f"(max {max(loads, default=0)}; target: 1)"
    )


async def run_profiles(srv: Servers, plan: KeyPlan, cfg: Config, tmp: Path) -> None:
    """py-spy on the caching server (hit load) and on the bare server, concurrency 64."""
    # The Zipf section emptied the cache: warm the working set again first.
    await call_many(srv.channels["cached"].stubs[0], plan.warm_requests("get_experiment"), 32)
    for name in ("cached", "bare"):
        proc = getattr(srv, name).process
        assert proc is not None
        load = run_closed_loop(
            srv.channels[name].stubs,
            plan.hit_factory("get_experiment"),
            concurrency=64,
            duration_s=cfg.profile_s + 1.0,
            max_requests=10_000_000,
        )
        print(f"\n== py-spy: {name} server, GetExperiment hits at concurrency 64 ==")
        await profile_server(proc.pid, cfg.profile_s, load, tmp / f"{name}.pyspy.txt")


async def start_servers(
    stack: AsyncExitStack, dsn: str, redis_url: str, namespace: str, tmp: Path
) -> tuple[ServerProcess, ServerProcess]:
    """The caching and the non-caching mcp-router, started together, stopped on exit."""
    common = {"POSTGRES_DSN": dsn, "REDIS_URL": redis_url}
    cached = router_server(
        "cached", free_port(), {**common, "KEY_NAMESPACE": namespace + "c:"}, tmp
    )
    nocache = router_server(
        "nocache",
        free_port(),
        {**common, "KEY_NAMESPACE": namespace + "n:", "CACHE_ENABLED": "false"},
        tmp,
    )
    for server in (cached, nocache):
        server.start(tmp)
        stack.callback(server.stop)
    await asyncio.gather(cached.wait_healthy(), nocache.wait_healthy())
    return cached, nocache


async def open_channels(stack: AsyncExitStack, server: ServerProcess, count: int) -> Channels:
    """Channels to ``server``, closed on exit."""
    channels = Channels(server.target, count)
    stack.push_async_callback(channels.close)
    return channels


@asynccontextmanager
async def bench_environment(
    cfg: Config, tmp: Path
) -> AsyncIterator[tuple[Servers, KeyPlan, str, str]]:
    """Backends, own database and namespace, data, three servers; all removed on exit."""
    run_id = secrets.token_hex(4)
    database, namespace = f"mcprouter_bench_{run_id}", f"bench-{run_id}-"
    plan = key_plan(cfg)
    async with AsyncExitStack() as stack:
        backends = await stack.enter_async_context(
            open_backends(cfg.postgres_dsn, cfg.redis_url, tmp)
        )
        print(
            f"backends: {'embedded' if backends.embedded else 'local servers'}; database "
            f"{database}; key namespaces {namespace}c: / {namespace}n:",
            flush=True,
        )
        dsn = await create_database(backends.postgres_admin_dsn, database)
        stack.push_async_callback(drop_database, backends.postgres_admin_dsn, database)
        stack.push_async_callback(report_unlinked, backends.redis_url, namespace)
        cached, nocache = await start_servers(stack, dsn, backends.redis_url, namespace, tmp)
        started = time.perf_counter()
        await copy_rows(dsn, plan.all_experiments(), plan.all_users())
        print(
            f"loaded {len(plan.all_experiments()):,} experiments and {cfg.users:,} profiles "
            f"with COPY in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        channels = {"cached": await open_channels(stack, cached, cfg.channels)}
        channels["nocache"] = await open_channels(stack, nocache, cfg.channels)
        await call_many(channels["cached"].stubs[0], plan.warm_requests("get_assignment"), 32)
        responses = tmp / "responses.json"
        await sample_responses(channels["cached"], plan, responses)
        bare = bare_server(free_port(), responses, tmp)
        bare.start(tmp)
        stack.callback(bare.stop)
        await bare.wait_healthy()
        channels["bare"] = await open_channels(stack, bare, cfg.channels)
        channels["no-cache"] = channels["nocache"]
        servers = Servers(cached, nocache, bare, channels)
        for name in ("cached", "nocache", "bare"):
            await warm_server(channels[name], plan, 1.0)
        yield servers, plan, namespace + "c:", backends.redis_url


async def report_unlinked(redis_url: str, namespace: str) -> None:
    """Remove this run's keys (both namespaces) and say how many there were."""
    removed = await unlink_matching(redis_url, namespace + "*")
    print(f"cleanup: removed {removed:,} Redis keys under {namespace}*", flush=True)


async def main_async(cfg: Config) -> None:
    """Set up, run every section, tear down."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mcprouter-bench-") as folder:
        tmp = Path(folder)
        async with bench_environment(cfg, tmp) as (srv, plan, namespace, redis_url):
            print(f"setup done in {time.perf_counter() - started:.1f} s; measuring", flush=True)
            await run_matrix(srv, plan, cfg)
            await run_ratios(srv, plan, cfg)
            await run_zipf(srv, cfg, namespace, redis_url)
            await run_stampedes(srv, plan, cfg)
            if cfg.profile_s > 0:
                await run_profiles(srv, plan, cfg, tmp)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


def describe(cfg: Config) -> str:
    """One paragraph on what is measured and how."""
    return (
        f"mcp-router PostgreSQL benchmark: cells of {cfg.duration_s} s or {cfg.max_requests:,} "
        f"requests (miss cells {cfg.miss_cap:,}), concurrency {cfg.concurrency}, "
        f"{cfg.channels} channels per server, working set {cfg.working_set:,} keys.\n"
        "hit = warmed keys on the caching server (one Redis GET per call, no L1); "
        "miss = a never-read key per call (GET, lease, PostgreSQL, SET);\n"
        "no-cache = CACHE_ENABLED=false (one PostgreSQL query per call, local server); "
        "bare = prebuilt answer, no backend (the gRPC ceiling)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    cfg = parse_args(argv)
    print(describe(cfg), flush=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        task_holder: list[asyncio.Task[None]] = []

        async def run() -> None:
            task_holder.append(asyncio.current_task())  # type: ignore[arg-type]
            loop.add_signal_handler(signal.SIGTERM, task_holder[0].cancel)
            await main_async(cfg)

        with suppress(KeyboardInterrupt, asyncio.CancelledError):
            runner.run(run())


if __name__ == "__main__":
    main()
