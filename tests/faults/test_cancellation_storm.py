"""Thousands of client-cancelled calls through a slow link to Redis; no crossed replies.

A delaying proxy sits between the server and Redis, so most calls are
cancelled (by a short deadline, or by the client's ``cancel()``) while a
Redis command is on the wire. A connection going back to the pool with its
reply unread would hand that reply to the next caller (redis-py #2624):
afterwards every key must still return its own value, and the pool must not
have leaked connections.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests import backends
from tests.e2e.conftest import ServerProcess
from tests.faults.conftest import Launch
from tests.faults.harness import (
    Tally,
    client_connections,
    experiment_request,
    get_experiment,
    get_profile,
    metric,
    profile_request,
    scrape,
    table,
    timed,
)
from tests.faults.proxy import DelayingProxy

pytestmark = pytest.mark.e2e

CALLS = 2000
CONCURRENCY = 64
# Client deadlines: most calls end while a Redis command is on the (slow) wire.
DEADLINES_S = (0.01, 0.12)
ENTITIES = 50
POOL_SIZE = 32
DELAY_S, JITTER_S = 0.01, 0.008


def check(kind: str, key: str, response: rs.RouteDataResponse | rs.GetCachedResponse) -> str | None:
    """Why ``response`` is not the value of ``key``, or None when it is."""
    if kind == "experiment":
        assert isinstance(response, rs.RouteDataResponse)
        got = response.experiment
        ok = got.experiment_id == key and got.name == f"name-of-{key}"
        return None if ok else f"experiment {key} -> {got.experiment_id}/{got.name}"
    if kind == "profile":
        assert isinstance(response, rs.RouteDataResponse)
        got_profile = response.user_profile
        ok = got_profile.user_id == key and got_profile.attributes.get("owner") == key
        return None if ok else f"profile {key} -> {got_profile.user_id}"
    assert isinstance(response, rs.GetCachedResponse)
    asked = key.split(",")
    for want, entry in zip(asked, response.entries, strict=True):
        if entry.key != want:
            return f"GetCached {want} -> entry {entry.key}"
        if entry.hit:
            value_id = (
                entry.experiment.experiment_id
                if entry.HasField("experiment")
                else entry.user_profile.user_id
            )
            if not want.endswith(f":{value_id}") and f":{value_id}:" not in want:
                return f"GetCached {want} -> value of {value_id}"
    return None


async def storm(stub: rs_grpc.RouterServiceStub, experiments: list[str], users: list[str]) -> Tally:
    tally = Tally()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        kind = random.choice(("experiment", "profile", "cached"))
        deadline = random.uniform(*DEADLINES_S)
        async with gate:
            # Made inside the gate: a call's deadline runs from its creation.
            call: Any
            if kind == "experiment":
                key = random.choice(experiments)
                call = stub.RouteData(get_experiment(key), timeout=deadline)
            elif kind == "profile":
                key = random.choice(users)
                call = stub.RouteData(get_profile(key), timeout=deadline)
            else:
                keys = [f"experiment:{random.choice(experiments)}" for _ in range(2)] + [
                    f"user:{random.choice(users)}:profile"
                ]
                key = ",".join(keys)
                call = stub.GetCached(rs.GetCachedRequest(keys=keys), timeout=deadline)
            if n % 3 == 0:  # a third are cancelled by the client itself, mid-flight
                await asyncio.sleep(random.uniform(0.005, 0.05))
                call.cancel()
            code, seconds, response = await timed(call)
        tally.add(code, seconds)
        if response is not None and (why := check(kind, key, response)):
            tally.wrong.append(why)

    await asyncio.gather(*(one(n) for n in range(CALLS)))
    return tally


async def verify(
    stub: rs_grpc.RouterServiceStub, experiments: list[str], users: list[str]
) -> Tally:
    """Read every key, concurrently, three times; each must return its own value."""
    tally = Tally()

    async def read(kind: str, key: str) -> None:
        if kind == "experiment":
            call = stub.RouteData(get_experiment(key), timeout=10)
        elif kind == "profile":
            call = stub.RouteData(get_profile(key), timeout=10)
        else:
            call = stub.GetCached(rs.GetCachedRequest(keys=key.split(",")), timeout=10)
        code, seconds, response = await timed(call)
        tally.add(code, seconds)
        if response is None:
            tally.wrong.append(f"{kind} {key}: {code}")
        elif why := check(kind, key, response):
            tally.wrong.append(why)

    jobs = [("experiment", e) for e in experiments] + [("profile", u) for u in users]
    jobs += [
        ("cached", f"experiment:{e},user:{u}:profile")
        for e, u in zip(experiments, users, strict=True)
    ]
    for _ in range(3):
        random.shuffle(jobs)
        await asyncio.gather(*(read(kind, key) for kind, key in jobs))
    return tally


def in_flight(server: ServerProcess) -> float:
    samples = scrape(server.metrics_port)  # type: ignore[attr-defined]
    return metric(samples, "mcprouter_rpc_in_flight", grpc_method="RouteData") + metric(
        samples, "mcprouter_rpc_in_flight", grpc_method="GetCached"
    )


async def test_cancellation_storm_leaves_no_crossed_replies(
    launch: Launch, valkey: backends.RestartableValkey
) -> None:
    with (
        DelayingProxy(("127.0.0.1", valkey.port), DELAY_S, JITTER_S) as proxy,
        launch(
            REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
            REDIS_POOL_SIZE=POOL_SIZE,
            # Long enough that the proxy's delay never trips it: callers'
            # cancellations, not Redis timeouts, are what interrupts commands.
            REDIS_TIMEOUT_MS=3000,
            REDIS_POOL_TIMEOUT_MS=3000,
            CACHE_LOCAL_MAX_ENTRIES=0,
        ) as server,
    ):
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            tag = uuid.uuid4().hex[:6]
            experiments = [f"cs-{tag}-e{i}" for i in range(ENTITIES)]
            users = [f"cs-{tag}-u{i}" for i in range(ENTITIES)]
            await asyncio.gather(
                *(stub.RouteData(experiment_request(e), timeout=20) for e in experiments),
                *(stub.RouteData(profile_request(u), timeout=20) for u in users),
            )
            # Half cached, half not: the storm cancels GETs, leases, loads and SETs.
            await asyncio.gather(
                *(stub.RouteData(get_experiment(e), timeout=20) for e in experiments[::2]),
                *(stub.RouteData(get_profile(u), timeout=20) for u in users[::2]),
            )
            started = time.monotonic()
            storm_tally = await storm(stub, experiments, users)
            storm_s = time.monotonic() - started
            drained = False
            for _ in range(100):  # polled, bounded: ~10 s
                drained = await asyncio.to_thread(in_flight, server) == 0
                if drained:
                    break
                await asyncio.sleep(0.1)
            checked = await verify(stub, experiments, users)
            samples = await asyncio.to_thread(scrape, server.metrics_port)  # type: ignore[attr-defined]
            connections = client_connections(valkey.url)

    server_cancelled = metric(samples, "mcprouter_rpc_requests_total", grpc_code="CANCELLED")
    server_deadline = metric(samples, "mcprouter_rpc_requests_total", grpc_code="DEADLINE_EXCEEDED")
    rows: list[tuple[str, object]] = [
        ("settings", f"proxy delay {DELAY_S * 1000:.0f}±{JITTER_S * 1000:.0f} ms per chunk, "
         f"REDIS_POOL_SIZE={POOL_SIZE}, L1 off, deadlines 10-120 ms, 1/3 cancel() after 5-50 ms"),
        ("storm requests", f"{storm_tally.requests} in {storm_s:.1f} s, "
         f"concurrency {CONCURRENCY}"),
        ("storm codes", dict(sorted(storm_tally.codes.items()))),
        ("seen by server", f"CANCELLED {server_cancelled:.0f}, "
         f"DEADLINE_EXCEEDED {server_deadline:.0f}"),
        ("wrong answers in storm", len(storm_tally.wrong)),
        ("in flight drained", "yes" if drained else "no"),
        ("verification reads", f"{checked.requests} (every experiment, profile and a "
         "GetCached pair, x3, concurrent)"),
        ("verification codes", dict(checked.codes)),
        ("crossed replies", len(checked.wrong)),
        ("Redis connections", f"{connections} (bound {POOL_SIZE + 1})"),
    ]  # fmt: skip
    table("Cancellation storm through a delaying proxy in front of Redis", rows)

    assert storm_tally.requests == CALLS
    assert set(storm_tally.codes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, storm_tally.codes
    assert storm_tally.codes["CANCELLED"] + storm_tally.codes["DEADLINE_EXCEEDED"] > CALLS // 2
    assert not storm_tally.wrong, storm_tally.wrong[:5]
    assert drained
    assert not checked.wrong, checked.wrong[:10]
    assert checked.errors() == {}
    assert connections <= POOL_SIZE + 1
