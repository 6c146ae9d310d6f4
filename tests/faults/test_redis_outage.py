"""Redis frozen (SIGSTOP/SIGCONT), then stopped and restarted, under read load.

Reads keep succeeding from PostgreSQL (fail open), the breaker opens and
closes again, no read waits much longer than REDIS_TIMEOUT_MS, and the pool
comes back without leaking connections.

No read waiting too long is a deadline on every read (a read past it fails
DEADLINE_EXCEEDED, an error like any other). Each phase lasts until what it is
for has been observed (a number of reads, the breaker open or closed again,
reads CACHED again), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests import backends
from tests.conditions import eventually, eventually_async
from tests.faults.conftest import Launch
from tests.faults.harness import (
    Tally,
    client_connections,
    experiment_request,
    frozen,
    get_experiment,
    metric,
    run_workers,
    scrape,
    status_name,
    table,
    timed,
    valkey_pid,
)

pytestmark = pytest.mark.e2e

REDIS_TIMEOUT_MS = 250
POOL_SIZE = 16
WORKERS = 16
EXPERIMENTS = 40
# Fail open costs at most one Redis timeout per call (then the breaker skips
# Redis); a second can be paid by a load's lease or SET. The bound leaves a
# second for the store read and a busy two-core machine.
LATENCY_BOUND_S = REDIS_TIMEOUT_MS / 1000 + 1.0
# Reads each phase must see answered before it may end.
READS_PER_PHASE = 50
# Bound on waiting for each phase's condition (breaker reset is 1 s).
PHASE_LIMIT_S = 30.0


async def test_redis_frozen_then_restarted_under_load(
    launch: Launch, valkey: backends.RestartableValkey
) -> None:
    with launch(
        REDIS_TIMEOUT_MS=REDIS_TIMEOUT_MS,
        REDIS_POOL_SIZE=POOL_SIZE,
        REDIS_BREAKER_FAILURES=5,
        REDIS_BREAKER_RESET_S=1,
        CACHE_LOCAL_MAX_ENTRIES=0,  # every read goes to Redis: the L1 would mask the outage
    ) as server:
        port = server.metrics_port  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            prefix = f"ro-{uuid.uuid4().hex[:6]}"
            ids = [f"{prefix}-{i}" for i in range(EXPERIMENTS)]
            for experiment_id in ids:
                await stub.RouteData(experiment_request(experiment_id), timeout=10)
            for experiment_id in ids:  # warm: FRESH, then CACHED
                await stub.RouteData(get_experiment(experiment_id), timeout=10)

            phase = "baseline"
            phases: dict[str, Tally] = {}
            done = False

            async def one(_: int) -> None:
                experiment_id = random.choice(ids)
                code, seconds, response = await timed(
                    stub.RouteData(get_experiment(experiment_id), timeout=LATENCY_BOUND_S)
                )
                tally = phases.setdefault(phase, Tally())
                tally.add(code, seconds, status_name(response) if response else None)
                if response is not None and response.experiment.experiment_id != experiment_id:
                    tally.wrong.append(f"{experiment_id} -> {response.experiment.experiment_id}")

            breaker_states: set[str] = set()
            breaker_now: list[str] = []  # the latest state scraped, once there is one

            async def watch_breaker() -> None:
                while not done:  # polls /metrics (a poll, not a wait for time to pass)
                    samples = await asyncio.to_thread(scrape, port)
                    for state in ("closed", "open", "half_open"):
                        if metric(samples, "mcprouter_redis_breaker_state", state=state) == 1:
                            breaker_states.add(state)
                            breaker_now[:] = [state]
                    await asyncio.sleep(0.1)

            async def until(what: str, condition: Callable[[Tally], bool]) -> None:
                """End the phase once it has READS_PER_PHASE reads and ``condition`` holds."""

                def reached() -> bool:
                    tally = phases.get(phase, Tally())
                    return tally.requests >= READS_PER_PHASE and condition(tally)

                await eventually(reached, f"phase {phase}: {what}", limit_s=PHASE_LIMIT_S)

            def breaker(state: str) -> Callable[[Tally], bool]:
                return lambda _: breaker_now == [state]

            def served_from_redis(tally: Tally) -> bool:
                return breaker_now == ["closed"] and tally.statuses["CACHED"] > 0

            load = asyncio.create_task(run_workers(WORKERS, lambda: done, one))
            watcher = asyncio.create_task(watch_breaker())
            await until("reads served", lambda tally: tally.statuses["CACHED"] > 0)

            phase = "SIGSTOP"
            with frozen(valkey_pid(valkey.url)):
                await until("breaker open", breaker("open"))
            phase = "after SIGCONT"
            await until("breaker closed, reads CACHED again", served_from_redis)
            after_freeze = client_connections(valkey.url)

            phase = "stopped"
            valkey.stop()
            await until("breaker open", breaker("open"))
            phase = "restarted"
            valkey.restart()
            await until("breaker closed, reads CACHED again", served_from_redis)
            done = True
            await asyncio.gather(load, watcher)

            # Recovered: a read is served from the (new, empty) Redis again.
            async def read_twice_cached() -> bool:
                await stub.RouteData(get_experiment(ids[0]), timeout=5)
                again = await stub.RouteData(get_experiment(ids[0]), timeout=5)
                return status_name(again) == "CACHED"

            await eventually_async(read_twice_cached, "reads CACHED after the restart")
            stats = await stub.Stats(rs.StatsRequest(), timeout=5)
            samples = await asyncio.to_thread(scrape, port)
            after_restart = client_connections(valkey.url)

    everything = Tally()
    for tally in phases.values():
        everything.codes.update(tally.codes)
        everything.latencies += tally.latencies
        everything.wrong += tally.wrong
    rows: list[tuple[str, object]] = [
        ("settings", f"REDIS_TIMEOUT_MS={REDIS_TIMEOUT_MS} REDIS_POOL_SIZE={POOL_SIZE} "
         f"breaker 5 failures / 1 s, L1 off, {WORKERS} workers"),
    ]  # fmt: skip
    for name, tally in phases.items():
        rows.append(
            (
                f"phase {name}",
                f"{tally.requests} reads, errors {tally.errors() or 'none'}, "
                f"served {dict(tally.statuses)}, p50 {tally.quantile(0.5) * 1000:.1f} ms, "
                f"max {max(tally.latencies) * 1000:.0f} ms",
            )
        )
    rows += [
        ("requests", everything.requests),
        ("errors by code", everything.errors() or "none"),
        ("max latency", f"{max(everything.latencies) * 1000:.0f} ms "
         f"(bound {LATENCY_BOUND_S * 1000:.0f} ms)"),
        ("wrong values", len(everything.wrong)),
        ("breaker states seen", ", ".join(sorted(breaker_states))),
        ("breaker at end", next(s for s in ("closed", "open", "half_open")
                                if metric(samples, "mcprouter_redis_breaker_state", state=s))),
        ("Stats.redis_errors", stats.redis_errors),
        ("Redis connections", f"{after_freeze} after SIGCONT, {after_restart} after restart "
         f"(bound {POOL_SIZE + 1})"),
    ]  # fmt: skip
    table("Redis stopped mid-load (SIGSTOP/SIGCONT, stop + restart)", rows)

    # Every read, with its deadline of LATENCY_BOUND_S, was answered OK.
    assert everything.errors() == {}, everything.errors()
    assert not everything.wrong, everything.wrong[:5]
    assert {"open", "closed"} <= breaker_states
    assert metric(samples, "mcprouter_redis_breaker_state", state="closed") == 1
    assert stats.redis_errors > 0
    # Pool connections plus the pub/sub connection of the invalidation feed.
    assert after_freeze <= POOL_SIZE + 1
    assert after_restart <= POOL_SIZE + 1
