"""PostgreSQL stopped under read load: stale answers flow, misses are UNAVAILABLE.

Entries are fresh for one second (TTL_EXPERIMENT_S=1) and kept ten minutes
longer, so once PostgreSQL is down every read of a cached experiment must be
served STALE; an experiment never read has nothing to fall back on and is
UNAVAILABLE. After PostgreSQL comes back, reads recover by themselves.

Every wait is for something observed (entries past their freshness in
GetCached, health NOT_SERVING, a read answered OK again), and the load runs
for a number of reads, not for a time.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.conditions import eventually_async
from tests.e2e.conftest import NOT_SERVING, SERVING, health_status, wait_for
from tests.faults.conftest import Launch
from tests.faults.harness import (
    PrivatePostgres,
    Tally,
    experiment_request,
    get_experiment,
    metric,
    run_workers,
    scrape,
    status_name,
    table,
    timed,
)

pytestmark = pytest.mark.e2e

WARM, COLD = 30, 10
WORKERS = 8
OUTAGE_READS = 300
RECOVERY_READS = 150


async def test_postgres_down_serves_stale_and_recovers(
    launch: Launch, private_postgres: PrivatePostgres
) -> None:
    with launch(
        TTL_EXPERIMENT_S=1,
        CACHE_STALE_TTL_S=600,
        CACHE_LOCAL_MAX_ENTRIES=0,  # the L1 would answer CACHED for up to 5 s
    ) as server:
        port = server.metrics_port  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            prefix = f"pg-{uuid.uuid4().hex[:6]}"
            warm = [f"{prefix}-warm-{i}" for i in range(WARM)]
            cold = [f"{prefix}-cold-{i}" for i in range(COLD)]
            for experiment_id in warm + cold:
                await stub.RouteData(experiment_request(experiment_id), timeout=10)
            for experiment_id in warm:
                await stub.RouteData(get_experiment(experiment_id), timeout=10)

            outage, recovery = Tally(), Tally()
            current = outage

            async def one(_: int) -> None:
                is_warm = random.random() < 0.8
                experiment_id = random.choice(warm if is_warm else cold)
                code, seconds, response = await timed(
                    stub.RouteData(get_experiment(experiment_id), timeout=10)
                )
                tally = current
                status = status_name(response) if response is not None else None
                tally.add(f"{code} ({'warm' if is_warm else 'cold'})", seconds, status)
                if response is not None and response.experiment.experiment_id != experiment_id:
                    tally.wrong.append(experiment_id)
                if tally is outage:
                    expected = ("OK", "STALE") if is_warm else ("UNAVAILABLE", None)
                    if (code, status) != expected:
                        tally.wrong.append(f"{experiment_id}: {code} {status}, want {expected}")

            async def none_fresh() -> bool:
                cached = await stub.GetCached(
                    rs.GetCachedRequest(keys=[f"experiment:{i}" for i in warm]), timeout=5
                )
                return all(e.hit and not e.fresh for e in cached.entries)

            private_postgres.stop()
            stopped_at = time.monotonic()  # for the report only
            try:
                # Every warm entry past its jittered freshness (1 s * up to 1.1),
                # and the server's health says PostgreSQL is down.
                await eventually_async(none_fresh, "every warm entry past its freshness")
                noticed = await asyncio.to_thread(
                    wait_for,
                    lambda: health_status(server.target, "postgres") == NOT_SERVING,
                    timeout_s=10,
                )
                assert noticed, "health never reported postgres NOT_SERVING"
                await run_workers(WORKERS, lambda: outage.requests >= OUTAGE_READS, one)
                during = await asyncio.to_thread(scrape, port)
            finally:
                private_postgres.start()
            down_s = time.monotonic() - stopped_at

            # Recovery needs nothing from us: the pool reconnects on use.
            current = recovery

            async def answered() -> bool:
                code, _, _ = await timed(stub.RouteData(get_experiment(cold[0]), timeout=5))
                return code == "OK"

            await eventually_async(answered, "a read answered OK after the restart", limit_s=30)
            await run_workers(WORKERS, lambda: recovery.requests >= RECOVERY_READS, one)
            healthy = await asyncio.to_thread(
                wait_for, lambda: health_status(server.target, "postgres") == SERVING, timeout_s=10
            )
            after = await asyncio.to_thread(scrape, port)

    stale_metric = metric(during, "mcprouter_cache_outcomes_total", outcome="stale")
    rows: list[tuple[str, object]] = [
        ("settings", "TTL_EXPERIMENT_S=1 CACHE_STALE_TTL_S=600 L1 off; "
         f"{WARM} cached + {COLD} never-read experiments, {WORKERS} workers, 80% warm reads"),
        ("PostgreSQL down for", f"{down_s:.1f} s (pg_ctl stop -m fast, then start)"),
        ("outage requests", outage.requests),
        ("outage codes", dict(sorted(outage.codes.items()))),
        ("outage served", dict(outage.statuses)),
        ("outage unexpected", len(outage.wrong)),
        ("metrics during", f"stale={stale_metric:.0f}, store errors="
         f"{metric(during, 'mcprouter_store_queries_total', result='error'):.0f}, "
         f"postgres up={metric(during, 'mcprouter_backend_up', backend='postgres'):.0f}"),
        ("recovery requests", recovery.requests),
        ("recovery codes", dict(sorted(recovery.codes.items()))),
        ("recovery served", dict(recovery.statuses)),
        ("health after", "postgres SERVING" if healthy else "postgres NOT_SERVING"),
        ("metrics after", f"postgres up="
         f"{metric(after, 'mcprouter_backend_up', backend='postgres'):.0f}"),
    ]  # fmt: skip
    table("PostgreSQL unavailable (stale-if-error, UNAVAILABLE misses, recovery)", rows)

    assert not outage.wrong, outage.wrong[:5]
    assert outage.codes["OK (warm)"] > 0 and outage.codes["UNAVAILABLE (cold)"] > 0
    # Counted per load, not per answer: callers that joined another caller's
    # single-flight load share its one STALE count.
    assert 0 < stale_metric <= outage.codes["OK (warm)"]
    assert not recovery.wrong, recovery.wrong[:5]
    assert set(recovery.codes) <= {"OK (warm)", "OK (cold)"}, recovery.codes
    assert "STALE" not in recovery.statuses
    assert healthy
