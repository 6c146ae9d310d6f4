"""The realistic benchmark's PostgreSQL read mixes: capacity under a p99 bound, and Zipf.

Both use the three PostgreSQL reads in turn (request ``n`` is GetExperiment,
GetAssignment or GetUserProfile by ``n % 3``):

- capacity: warmed keys, concurrency raised step by step on the no-cache and
  the L1 server until two steps in a row pass the p99 bound (each step the
  best of a few tries); the highest RPS of a step within it (the seed's
  "10x more concurrent requests");
- Zipf(1.1) over every user (profiles, assignments) and every experiment,
  from a cold cache on the L1 server: the store reads it avoided, from the
  server's Stats (the seed's "60-80% fewer database queries").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from _common import (
    Channels,
    LoadResult,
    RequestFactory,
    call_many,
    run_closed_loop,
    table,
    type_stats,
)
from _data import unlink_matching
from _realistic_env import Env, Sizes
from _workloads import Zipf, experiment_id, get_assignment, get_experiment, get_user_profile
from _workloads import ideal_hit_rate as ideal

from mcprouter.server.config import Settings
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.serve_status_pb2 import DataType

PG_OPS = ("get_experiment", "get_assignment", "get_user_profile")
PG_TYPES = (
    DataType.DATA_TYPE_EXPERIMENT,
    DataType.DATA_TYPE_ASSIGNMENT,
    DataType.DATA_TYPE_USER_PROFILE,
)
SEED_RATIO = 10.0
POOL = int(Settings.model_fields["postgres_pool_size"].default)


def mix(factories: Mapping[str, RequestFactory]) -> RequestFactory:
    """Request ``n``: the ``n % 3``-th PostgreSQL read, key ``n // 3`` of its working set."""
    return lambda n: factories[PG_OPS[n % 3]](n // 3)


@dataclass(frozen=True)
class Capacity:
    """How the capacity section steps: levels, seconds and tries per level, the p99 bound."""

    steps: Sequence[int]
    step_s: float
    tries: int
    bound_ms: float
    working_set: int


async def step(channels: Channels, read: RequestFactory, c: int, cap: Capacity) -> LoadResult:
    """The try with the lowest p99 among ``cap.tries`` runs at concurrency ``c``.

    The machine is shared: a burst of background load in one run would
    otherwise decide the step.
    """
    runs = [
        await run_closed_loop(
            channels.stubs, read, concurrency=c, duration_s=cap.step_s, max_requests=10_000_000
        )
        for _ in range(cap.tries)
    ]
    return min(runs, key=lambda r: (r.errors > 0, r.p(99)))


async def run_capacity(
    env: Env, factories: Mapping[str, RequestFactory], cap: Capacity, rtt: float
) -> None:
    """Raise the concurrency until p99 passes the bound; best RPS under it, no cache vs L1."""
    read = mix(factories)
    bound_ms = cap.bound_ms
    rows: list[list[object]] = []
    best: dict[str, float] = {}
    for server in ("nocache", "l1"):
        channels = env.channels[server]
        if server == "l1":  # every key of the mix in Redis and the L1
            warm = [read(n) for n in range(3 * cap.working_set)]
            for _ in range(2):
                await call_many(channels.stubs[0], warm, 16)
        best[server] = 0.0
        over = 0  # consecutive steps over the bound: one may be a burst of background load
        for c in cap.steps:
            r = await step(channels, read, c, cap)
            within = r.errors == 0 and r.p(99) <= bound_ms * 1000
            if within:
                best[server] = max(best[server], r.rps)
            rows.append(
                [server, c, f"{r.rps:,.0f}", f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}",
                 r.errors, "yes" if within else "no"]
            )  # fmt: skip
            over = 0 if within else over + 1
            if over == 2:
                break
    print(
        f"\n== Capacity, PostgreSQL RTT +{rtt:g} ms: read mix (GetExperiment, GetAssignment, "
        f"GetUserProfile in turn, warmed keys), concurrency raised until p99 > {bound_ms:g} ms =="
    )
    print(table(["server", "conc", "RPS", "p50 ms", "p99 ms", "errors", "p99 in bound"], rows))
    ratio = best["l1"] / best["nocache"] if best["nocache"] else float("inf")
    print(
        f"(no cache: every call holds one of POSTGRES_POOL_SIZE = {POOL} connections for a "
        f"round trip, so it cannot pass about {POOL} / (RTT + query time) calls per second; "
        "L1: bounded by the CPU the server and this load generator share)"
    )
    print(
        f"max RPS with p99 <= {bound_ms:g} ms: no cache {best['nocache']:,.0f}, L1 "
        f"{best['l1']:,.0f}: {ratio:.1f}x (seed: {SEED_RATIO:g}x more concurrent requests)"
    )


def zipf_requests(
    sizes: Sizes, length: int, seed: int
) -> tuple[list[rs.RouteDataRequest], list[str]]:
    """``length`` reads of the mix with Zipf(1.1) users and experiments; their cache keys."""
    users = Zipf(sizes.users, 1.1, seed=seed).sequence(length)
    # Zipf ranks over the experiments: the user-id form of a rank, read back as an index.
    ranks = Zipf(sizes.experiments, 1.1, seed=seed + 1).sequence(length)
    requests, keys = [], []
    for n, (user, rank) in enumerate(zip(users, ranks, strict=True)):
        exp = experiment_id(int(rank[1:]))
        if n % 3 == 0:
            requests.append(get_experiment(exp))
            keys.append(f"experiment:{exp}")
        elif n % 3 == 1:
            requests.append(get_assignment(exp, user))
            keys.append(f"assignment:{exp}:{user}")
        else:
            requests.append(get_user_profile(user))
            keys.append(f"user:{user}")
    return requests, keys


async def run_zipf(
    env: Env, sizes: Sizes, windows: int, length: int, seconds: float, rtt: float
) -> None:
    """``windows`` consecutive windows of the Zipf mix on the L1 server, from an empty cache."""
    channels = env.channels["l1"]
    removed = await unlink_matching(env.redis_url, env.namespace + "c:*")
    for family in ("experiment", "assignment", "user"):  # reaches the L1; an UNLINK does not
        await channels.stubs[0].Invalidate(rs.InvalidateRequest(pattern=f"{family}:*"), timeout=30)
    seen: set[str] = set()
    rows: list[list[object]] = []
    for window in range(windows):
        label = "cold start" if window == 0 else f"then {window + 1}"
        requests, keys = zipf_requests(sizes, length, seed=31 + window)
        before = await channels.stats()
        r = await run_closed_loop(
            channels.stubs,
            lambda n, reqs=requests: reqs[n],  # type: ignore[misc]
            concurrency=64,
            duration_s=seconds,
            max_requests=len(requests),
        )
        after = await channels.stats()
        sent = keys[: r.requests + r.errors]
        best = ideal(sent, seen)
        seen.update(sent)
        counts = {
            name: sum(
                int(getattr(type_stats(after, t), name)) - int(getattr(type_stats(before, t), name))
                for t in PG_TYPES
            )
            for name in ("hits", "local_hits", "misses", "loads")
        }
        avoided = after.store_queries_avoided - before.store_queries_avoided
        reads = avoided + counts["misses"]
        rows.append(
            [label, r.requests, f"{r.rps:,.0f}", f"{r.p(50) / 1000:.2f}", f"{r.p(99) / 1000:.2f}",
             r.errors, counts["hits"], counts["local_hits"], counts["misses"], counts["loads"],
             f"{avoided / reads:.1%}" if reads else "-",
             f"{1 - counts['loads'] / max(r.requests, 1):.1%}", f"{best:.1%}"]
        )  # fmt: skip
    print(
        f"\n== Fewer database queries: Zipf(1.1) read mix over {sizes.users:,} users and "
        f"{sizes.experiments:,} experiments, concurrency 64, L1 server, PostgreSQL RTT +{rtt:g} "
        f"ms, cache emptied first ({removed:,} Redis keys removed, L1 invalidated) ==\n"
        "   avoided = Stats store_queries_avoided / (avoided + misses): the share of cached reads "
        "(an assignment's experiment lookup included) answered without PostgreSQL;\n"
        "   1-loads/req = PostgreSQL queries saved per request (the no-cache server makes at "
        "least one per request); ideal = best any cache could do on this window; seed: 60-80%"
    )
    headers = ["window", "requests", "RPS", "p50 ms", "p99 ms", "errors", "hits", "L1 hits"]
    print(table([*headers, "misses", "loads", "avoided", "1-loads/req", "ideal"], rows))
