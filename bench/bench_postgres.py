"""Benchmark of the PostgreSQL operations of RouteData through the cache.

Starts four server subprocesses (the real mcp-router with its default cache,
in-process L1 in front of Redis included; the same with the L1 off,
``CACHE_LOCAL_MAX_ENTRIES=0``; the same with ``CACHE_ENABLED=false``; and a
bare grpc.aio RouterService that answers a prebuilt response), loads
experiments and 100 000 user profiles with COPY into a database of its own,
and prints:

1. RPS and p50/p99 of GetExperiment, GetUserProfile and GetAssignment at each
   concurrency for: L1 hit, Redis hit, cache miss, caching disabled, bare
   server, with how many answers the L1 served (Stats ``local_hits``);
2. the ratios of both hit kinds to the bare and no-cache servers;
3. a Zipf(1.1) read workload over every profile, starting from a cold cache
   (hit rate, L1 hits and store queries avoided, from the server's Stats RPC);
4. a 64-way single-flight stampede on cold experiment keys (store loads per key).

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
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import uvloop
from _common import (
    Channels,
    LoadResult,
    RequestFactory,
    call_many,
    diff,
    free_port,
    local_hits,
    run_closed_loop,
    table,
    type_stats,
)
from _data import copy_rows, create_database, drop_database, open_backends, unlink_matching
from _profile import profile_server
from _servers import (
    L1_MAX_AGE_S,
    L1_MAX_ENTRIES,
    MODES,
    SERVER_OF_MODE,
    Servers,
    bare_server,
    open_channels,
    start_routers,
)
from _workloads import OPERATIONS, KeyPlan, Zipf, get_experiment, ideal_hit_rate
from _workloads import get_user_profile as profile_request

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

# Modes whose server has no Stats worth reading (the bare one answers an empty one).
NO_STATS = frozenset({"bare"})
# The modes of the ratio table, in the order they alternate.
RATIO_MODES = ("hit-l1", "hit-redis", "no-cache", "bare")


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
        cells=len(cfg.concurrency) + 1,  # one per matrix cell, the last for the miss profile
        stampede_keys=cfg.stampede_keys,
    )


async def sample_responses(channels: Channels, plan: KeyPlan, path: Path) -> None:
    """Save one real answer per operation, for the bare server to replay."""
    answers = {}
    for op in OPERATIONS:
        request = plan.hit_factory(op)(0)
        reply = await channels.stubs[0].RouteData(request, timeout=10)
        answers[op] = reply.SerializeToString().hex()
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


async def prime(srv: Servers, mode: str, plan: KeyPlan, op: str) -> None:
    """Untimed reads of the working set of ``op`` on the server of ``mode``.

    One pass stores every key in Redis (fresh for 30 min or more) and in the
    L1 (a loaded value is admitted unless an invalidation began meanwhile);
    for hit-l1 a second pass admits any key whose load raced one. An
    L1 entry is served for at most ``CACHE_LOCAL_MAX_AGE_S`` from its admission
    (L1 hits do not extend it) and is then read from Redis and admitted again.
    """
    for _ in range(2 if mode == "hit-l1" else 1):
        await call_many(srv.of(mode).stubs[0], plan.warm_requests(op), 32)


@dataclass(frozen=True)
class Cell:
    """One measured cell and how many of its answers the server's L1 served."""

    result: LoadResult
    l1_hits: int | None  # None: the server has no cache Stats (bare)


async def measure(srv: Servers, mode: str, factory: RequestFactory, c: int, cfg: Config) -> Cell:
    """One bounded closed-loop cell, with the Stats ``local_hits`` diff around it."""
    channels = srv.of(mode)
    before = None if mode in NO_STATS else await channels.stats()
    r = await run_closed_loop(
        channels.stubs,
        factory,
        concurrency=c,
        duration_s=cfg.duration_s,
        max_requests=cfg.max_requests,
    )
    if before is None:
        return Cell(r, None)
    return Cell(r, local_hits(await channels.stats()) - local_hits(before))


def fmt_l1(hits: int | None, requests: int) -> str:
    """L1 hits and their share of the successful requests."""
    if hits is None:
        return "-"
    return f"{hits:,} ({hits / requests:.0%})" if requests else f"{hits:,}"


def fmt_row(op: str, mode: str, c: int, cell: Cell) -> list[object]:
    """A table row of one cell."""
    r = cell.result
    statuses = ",".join(
        f"{ServeStatus.Name(ServeStatus.ValueType(s))[13:]}:{n}"
        for s, n in sorted(r.statuses.items())
    )
    errors = ",".join(f"{k}:{v}" for k, v in r.error_codes.items()) or "0"
    latency = [f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}"]
    l1 = fmt_l1(cell.l1_hits, r.requests)
    return [op, mode, c, r.requests, f"{r.rps:,.0f}", *latency, errors, statuses, l1]


async def run_matrix(srv: Servers, plan: KeyPlan, cfg: Config) -> dict[tuple[str, str, int], Cell]:
    """Every (operation, mode, concurrency) cell; prints each row as it completes."""
    results: dict[tuple[str, str, int], Cell] = {}
    headers = ["operation", "mode", "conc", "requests", "RPS", "p50 ms", "p99 ms"]
    headers += ["errors", "served", "L1 hits"]
    rows: list[list[object]] = []
    for op in OPERATIONS:
        # The L1 pass last, so that the hit-l1 cells start with every key just put.
        for mode in ("hit-redis", "hit-l1"):
            await prime(srv, mode, plan, op)
        for mode in MODES:
            for cell_no, c in enumerate(cfg.concurrency):
                factory = plan.miss_factory(op, cell_no) if mode == "miss" else plan.hit_factory(op)
                cell = await measure(srv, mode, factory, c, cfg)
                results[(op, mode, c)] = cell
                rows.append(fmt_row(op, mode, c, cell))
                print(
                    f"  {op:<17} {mode:<9} c={c:<3} {cell.result.rps:>8,.0f} RPS  "
                    f"L1 {fmt_l1(cell.l1_hits, cell.result.requests)}",
                    flush=True,
                )
    print(
        "\n== RouteData over gRPC (closed loop; latency per call; L1 hits = Stats local_hits "
        "diff on the server measured, and their share of the requests) =="
    )
    print(table(headers, rows))
    return results


def ratio(a: float, b: float) -> float:
    """a / b, 0 when b is 0."""
    return a / b if b else 0.0


def share_of(rps: dict[str, list[float]], mode: str, base: str) -> str:
    """Median ``mode`` / median ``base`` RPS, with the range of the per-round ratios."""
    per_round = [ratio(m, b) for m, b in zip(rps[mode], rps[base], strict=True)]
    median = ratio(statistics.median(rps[mode]), statistics.median(rps[base]))
    return f"{median:.0%} ({min(per_round):.0%}-{max(per_round):.0%})"


async def run_ratios(srv: Servers, plan: KeyPlan, cfg: Config) -> None:
    """hit-l1, hit-redis, no-cache and bare cells alternated for a few rounds; medians and ratios.

    The machine is shared and noisy: interleaving the servers and taking
    medians keeps a burst of background load from landing on one side only.
    Each hit-l1 cell follows an untimed pass over the working set, since the
    other cells of the round take longer than the L1's maximum age.
    """
    c = max(cfg.concurrency)
    rows = []
    for op in OPERATIONS:
        rps: dict[str, list[float]] = {m: [] for m in RATIO_MODES}
        l1_hits = l1_requests = 0
        for _ in range(cfg.rounds):
            for mode in RATIO_MODES:
                if mode == "hit-l1":
                    await prime(srv, mode, plan, op)
                cell = await measure(srv, mode, plan.hit_factory(op), c, cfg)
                rps[mode].append(cell.result.rps)
                if mode == "hit-l1":
                    l1_hits += cell.l1_hits or 0
                    l1_requests += cell.result.requests
        medians = [f"{statistics.median(rps[m]):,.0f}" for m in RATIO_MODES]
        versus_bare = [share_of(rps, m, "bare") for m in ("hit-l1", "hit-redis")]
        versus_nocache = [
            f"{ratio(statistics.median(rps[m]), statistics.median(rps['no-cache'])):.2f}x"
            for m in ("hit-l1", "hit-redis")
        ]
        rows.append([op, *medians, *versus_bare, *versus_nocache, fmt_l1(l1_hits, l1_requests)])
    print(
        f"\n== Ratios at concurrency {c}: {' / '.join(RATIO_MODES)} alternated, {cfg.rounds} "
        "rounds, median RPS (x/bare: ratio of medians, per-round range in brackets; "
        "target: hit-l1 >= 70% of bare) =="
    )
    headers = [f"{m} RPS" for m in RATIO_MODES]
    headers += ["hit-l1/bare", "hit-redis/bare", "hit-l1/no-cache", "hit-redis/no-cache"]
    print(table(["operation", *headers, "hit-l1 L1 hits"], rows))


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
    l1 = diff(a, b, "local_hits")
    avoided = after.store_queries_avoided - before.store_queries_avoided
    reads = avoided + misses
    share = f"{avoided / reads:.1%}" if reads else "-"
    per_request = f"{1 - loads / max(r.requests, 1):.1%}"
    latency = [f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}"]
    figures = [hits, fmt_l1(l1, r.requests), misses, loads, share, per_request, f"{ideal:.1%}"]
    return [label, r.requests, f"{r.rps:,.0f}", *latency, *figures]


async def empty_cache(channels: Channels, namespace: str, redis_url: str) -> int:
    """Remove the server's Redis keys and its L1 profiles; return how many keys went.

    An UNLINK behind the server's back leaves its L1 serving those keys for up
    to the maximum age; the Invalidate RPC announces the pattern to the L1.
    """
    removed = await unlink_matching(redis_url, namespace + "*")
    await channels.stubs[0].Invalidate(rs.InvalidateRequest(pattern="user:*"), timeout=30)
    return removed


async def run_zipf(srv: Servers, cfg: Config, namespace: str, redis_url: str) -> None:
    """Zipf(1.1) GetUserProfile over every profile, from a cold cache, two windows."""
    channels = srv.of("hit-l1")
    removed = await empty_cache(channels, namespace, redis_url)
    zipf = Zipf(cfg.users, 1.1)
    seen: set[str] = set()
    rows = []
    for label in ("cold start", "continued"):
        sequence = zipf.sequence(cfg.zipf_requests)
        rows.append(await zipf_window(channels, sequence, seen, label, cfg))
    print(
        f"\n== Zipf(1.1) GetUserProfile over {cfg.users:,} keys, concurrency 64, default server "
        f"(L1 on), cache emptied first ({removed:,} Redis keys removed, L1 invalidated) ==\n"
        f"   L1 hits = Stats local_hits, a subset of hits (an L1 entry is served for at most "
        f"{L1_MAX_AGE_S:g} s, then read from Redis again); avoided = Stats "
        "store_queries_avoided / (avoided + misses);\n   1-loads/req = store queries avoided "
        "per request; ideal = best any cache could do on this window (compulsory misses "
        "only; target >= 90%)"
    )
    headers = ["window", "requests", "RPS", "p50 ms", "p99 ms", "hits", "L1 hits", "misses"]
    print(table([*headers, "loads", "avoided", "1-loads/req", "ideal"], rows))


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
    fields = ("loads", "misses", "hits", "local_hits", "lease_waits")
    return [diff(a, b, f) for f in fields] + [errors]


async def run_stampedes(srv: Servers, plan: KeyPlan, cfg: Config) -> None:
    """The single-flight stampede on each cold stampede key, on the default server."""
    from _workloads import stampede_experiment_id

    counts: list[list[int]] = []
    for i in range(plan.stampede_keys):
        exp = stampede_experiment_id(i)
        counts.append(await stampede(srv.of("hit-l1"), exp, cfg.stampede_width))
    rows = [[stampede_experiment_id(i), *c] for i, c in enumerate(counts)]
    loads = [c[0] for c in counts]
    print(
        f"\n== Single-flight: {cfg.stampede_width} concurrent GetExperiment per cold key, "
        "default server (L1 on) =="
    )
    headers = ["key", "loads", "misses", "hits", "local_hits", "lease_waits", "errors"]
    print(table(headers, rows))
    print(
        f"store loads per key: {sum(loads) / max(len(loads), 1):.2f} over {len(loads)} keys "
        f"(max {max(loads, default=0)}; target: 1)"
    )


async def run_profiles(srv: Servers, plan: KeyPlan, cfg: Config, tmp: Path) -> None:
    """py-spy on each path's server under GetExperiment at concurrency 64.

    Misses read the experiments kept for this profile (the plan's last miss
    cell), so the load stops when they run out, before py-spy does.
    """
    for mode in ("hit-l1", "hit-redis", "miss", "no-cache", "bare"):
        if mode in ("hit-l1", "hit-redis"):
            # The Zipf section emptied the default server's cache: warm it again.
            await prime(srv, mode, plan, "get_experiment")
        name = SERVER_OF_MODE[mode]
        proc = srv.processes[name].process
        assert proc is not None
        miss = mode == "miss"
        load = run_closed_loop(
            srv.of(mode).stubs,
            plan.miss_factory("get_experiment", plan.cells - 1)
            if miss
            else plan.hit_factory("get_experiment"),
            concurrency=64,
            duration_s=cfg.profile_s + 1.0,
            max_requests=plan.miss_cap if miss else 10_000_000,
        )
        print(f"\n== py-spy: {name} server ({mode}), GetExperiment at concurrency 64 ==")
        await profile_server(proc.pid, cfg.profile_s, load, tmp / f"{name}.pyspy.txt")


@asynccontextmanager
async def bench_environment(
    cfg: Config, tmp: Path
) -> AsyncIterator[tuple[Servers, KeyPlan, str, str]]:
    """Backends, own database and namespaces, data, four servers; all removed on exit."""
    run_id = secrets.token_hex(4)
    database, namespace = f"mcprouter_bench_{run_id}", f"bench-{run_id}-"
    plan = key_plan(cfg)
    async with AsyncExitStack() as stack:
        backends = await stack.enter_async_context(
            open_backends(cfg.postgres_dsn, cfg.redis_url, tmp)
        )
        print(
            f"backends: {'embedded' if backends.embedded else 'local servers'}; database "
            f"{database}; key namespaces {namespace}c: (l1) / {namespace}r: (redis) / "
            f"{namespace}n: (nocache)",
            flush=True,
        )
        dsn = await create_database(backends.postgres_admin_dsn, database)
        stack.push_async_callback(drop_database, backends.postgres_admin_dsn, database)
        stack.push_async_callback(report_unlinked, backends.redis_url, namespace)
        routers = await start_routers(stack, dsn, backends.redis_url, namespace, tmp)
        started = time.perf_counter()
        await copy_rows(dsn, plan.all_experiments(), plan.all_users())
        print(
            f"loaded {len(plan.all_experiments()):,} experiments and {cfg.users:,} profiles "
            f"with COPY in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        channels = {
            name: await open_channels(stack, server, cfg.channels)
            for name, server in routers.items()
        }
        # Stores the assignments, so that no-cache reads them with one SELECT.
        await call_many(channels["l1"].stubs[0], plan.warm_requests("get_assignment"), 32)
        responses = tmp / "responses.json"
        await sample_responses(channels["l1"], plan, responses)
        bare = bare_server(free_port(), responses, tmp)
        bare.start(tmp)
        stack.callback(bare.stop)
        await bare.wait_healthy()
        channels["bare"] = await open_channels(stack, bare, cfg.channels)
        servers = Servers({**routers, "bare": bare}, channels)
        for name in ("l1", "redis", "nocache", "bare"):
            await warm_server(channels[name], plan, 1.0)
        yield servers, plan, namespace + "c:", backends.redis_url


async def report_unlinked(redis_url: str, namespace: str) -> None:
    """Remove this run's keys (every namespace) and say how many there were."""
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
        f"hit-l1 = warmed keys on the default server: in-process L1 on ({L1_MAX_ENTRIES:,} "
        f"entries, each served for at most {L1_MAX_AGE_S:g} s, so a hot key is read from Redis "
        f"again every {L1_MAX_AGE_S:g} s);\n"
        "hit-redis = warmed keys on a server with CACHE_LOCAL_MAX_ENTRIES=0 (one Redis GET "
        "per call); miss = a never-read key per call on the default server (GET, lease, "
        "PostgreSQL, SET);\n"
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
