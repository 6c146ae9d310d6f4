"""Fault phases: inject, hold, heal, then a grace window and a steady tail.

One phase per fault, in a fixed order (the table has one row each):

| phase               | fault                                                         |
|---------------------|---------------------------------------------------------------|
| none                | nothing                                                       |
| redis-paused        | SIGSTOP of the private Valkey, SIGCONT at heal                |
| redis-conns-killed  | CLIENT KILL of every instance connection, every 300 ms        |
| redis-restarted     | SIGKILL of Valkey, started again (same port, AOF) at heal     |
| pg-unreachable      | the proxy cuts every connection and refuses new ones          |
| pg-slow             | the proxy delays every chunk by ``PG_DELAY_S`` each way       |
| deadline-storm      | half the calls get 10-100 ms deadlines, 30% are cancelled     |
| instance-killed     | SIGKILL of instance 1 under ingest; restarted (same port/chDB)|
| pg-down-restart     | PostgreSQL unreachable, instance 0 restarted: it must start,  |
|                     | report ``postgres`` NOT_SERVING, and recover after heal       |

Reads invoked between injection and the end of the grace window of a Redis
fault (the invalidation feed is cut) are held to the fault bound (L1 max age
+ retry interval); all others to the tight bound, as the model says: with the
feed healthy, an acknowledged write is visible everywhere within the bound
whatever PostgreSQL, deadlines or a crashed peer do (``--relax-all-faults``
applies the fault bound to every fault instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from tests.consistency.cluster import Cluster, PersistentValkey, health, wait_ready
from tests.consistency.history import Violation
from tests.consistency.proxy import PostgresProxy
from tests.consistency.workload import Conditions

PG_DELAY_S = 0.1
KILL_EVERY_S = 0.3
HEALTH_WAIT_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Timing:
    """How long each part of a phase lasts (seconds)."""

    fault_s: float = 2.0
    grace_s: float = 3.5  # at least the fault bound, so steady reads follow healed state
    steady_s: float = 1.0
    baseline_s: float = 3.0  # the "none" phase


@dataclass
class Window:
    """When a phase's fault was active.

    Reads in [injected, grace_end) of a fault that cuts the invalidation feed
    (``relaxed``) get the fault bound; every other read gets the tight one.
    """

    name: str
    start: float
    relaxed: bool = False
    injected: float = 0.0
    healed: float = 0.0
    grace_end: float = 0.0
    end: float = 0.0

    def faulty(self, t: float) -> bool:
        return self.relaxed and self.injected <= t < self.grace_end


Step = Callable[["FaultController"], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Step | None = None
    heal: Step | None = None
    hold: Step | None = None  # runs for the fault's duration instead of a plain sleep
    # Whether the fault reaches Redis, and so the invalidation feed: the model
    # relaxes the bound to the L1 max age (+ retries) only then. PostgreSQL
    # faults, deadlines and a dead instance leave the feed healthy.
    feed_down: bool = False


class FaultController:
    """Runs the phases against a cluster and records their windows and incidents."""

    def __init__(
        self,
        cluster: Cluster,
        conditions: Conditions,
        timing: Timing,
        log: Callable[[str], None] = lambda _: None,
        phases: tuple[str, ...] | None = None,
        relax_all: bool = False,
    ) -> None:
        self.relax_all = relax_all
        self.faults = tuple(f for f in FAULTS if phases is None or f.name in phases)
        self.cluster = cluster
        self.log = log
        self.conditions = conditions
        self.timing = timing
        self.windows: list[Window] = []
        self.incidents: list[Violation] = []
        self.notes: list[str] = []
        self._default = (conditions.p_tight, conditions.p_cancel)
        self._valkey_pid = 0
        self._fault_end = 0.0

    @property
    def valkey(self) -> PersistentValkey:
        assert self.cluster.valkey is not None
        return self.cluster.valkey

    @property
    def proxy(self) -> PostgresProxy:
        assert self.cluster.proxy is not None
        return self.cluster.proxy

    def cycle_length(self) -> float:
        t = self.timing
        faults = [f for f in self.faults if f.inject is not None]
        return t.baseline_s + len(faults) * (t.fault_s + t.grace_s + t.steady_s)

    async def run(self, duration_s: float) -> None:
        """Run whole cycles of every phase (at least one) within ``duration_s``."""
        started = time.monotonic()
        cycle = 0
        while cycle == 0 or time.monotonic() - started + self.cycle_length() <= duration_s:
            cycle += 1
            for fault in self.faults:
                await self._phase(fault, cycle)

    async def _phase(self, fault: Fault, cycle: int) -> None:
        t = self.timing
        name = fault.name if cycle == 1 else f"{fault.name}/{cycle}"
        relaxed = fault.feed_down or self.relax_all
        window = Window(name, start=time.monotonic(), relaxed=relaxed)
        self.windows.append(window)
        self.conditions.phase = name
        self.log(f"phase {name}")
        if fault.inject is None:
            window.injected = window.healed = window.grace_end = window.start
            await asyncio.sleep(t.baseline_s)
            window.end = time.monotonic()
            return
        window.injected = time.monotonic()  # before: injecting may itself take seconds
        await fault.inject(self)
        self._fault_end = time.monotonic() + t.fault_s
        if fault.hold is not None:
            await fault.hold(self)
        await asyncio.sleep(max(0.0, self._fault_end - time.monotonic()))
        try:
            if fault.heal is not None:
                await fault.heal(self)
        finally:
            window.healed = time.monotonic()
        await asyncio.sleep(t.grace_s)
        window.grace_end = time.monotonic()
        await asyncio.sleep(t.steady_s)
        window.end = time.monotonic()

    def note(self, message: str) -> None:
        self.notes.append(f"{self.conditions.phase}: {message}")

    def incident(self, kind: str, message: str, *evidence: str) -> None:
        self.incidents.append(Violation(kind, self.conditions.phase, message, tuple(evidence)))

    async def heal_everything(self) -> None:
        """Leave no fault behind (after the last phase, or when a phase failed)."""
        with contextlib.suppress(ProcessLookupError):
            if self._valkey_pid:
                os.kill(self._valkey_pid, signal.SIGCONT)
        self.proxy.pass_through()
        self.conditions.p_tight, self.conditions.p_cancel = self._default
        for instance in self.cluster.instances:
            if not instance.alive():
                await asyncio.to_thread(self.cluster.restart, instance)


# --- the faults ----------------------------------------------------------------


async def _pause_redis(c: FaultController) -> None:
    c._valkey_pid = await asyncio.to_thread(c.valkey.pid)
    os.kill(c._valkey_pid, signal.SIGSTOP)


async def _resume_redis(c: FaultController) -> None:
    os.kill(c._valkey_pid, signal.SIGCONT)
    c._valkey_pid = 0


async def _kill_connections(c: FaultController) -> None:
    while time.monotonic() < c._fault_end:
        await asyncio.to_thread(c.valkey.kill_instance_connections)
        await asyncio.sleep(KILL_EVERY_S)


async def _noop(c: FaultController) -> None:
    return None


async def _kill_redis(c: FaultController) -> None:
    await asyncio.to_thread(c.valkey.kill)


async def _start_redis(c: FaultController) -> None:
    await asyncio.to_thread(c.valkey.start_again)


async def _pg_unreachable(c: FaultController) -> None:
    await asyncio.to_thread(c.proxy.unreachable)


async def _pg_slow(c: FaultController) -> None:
    c.proxy.slow(PG_DELAY_S)


async def _pg_heal(c: FaultController) -> None:
    c.proxy.pass_through()


async def _storm(c: FaultController) -> None:
    c.conditions.p_tight, c.conditions.p_cancel = 0.5, 0.3


async def _calm(c: FaultController) -> None:
    c.conditions.p_tight, c.conditions.p_cancel = c._default


async def _kill_instance(c: FaultController) -> None:
    await asyncio.to_thread(c.cluster.instances[1].kill)


async def _restart_killed(c: FaultController) -> None:
    instance = c.cluster.instances[1]
    started = time.monotonic()
    try:
        await asyncio.to_thread(c.cluster.restart, instance)
    except RuntimeError as exc:
        c.incident("restart-failed", f"{instance.name} did not come back after SIGKILL", str(exc))
        return
    c.note(f"{instance.name} back {time.monotonic() - started:.1f} s after its restart (same chDB)")


async def _restart_while_pg_down(c: FaultController) -> None:
    """The instance must start with PostgreSQL down and say so by name."""
    await asyncio.to_thread(c.proxy.unreachable)
    instance = c.cluster.instances[0]
    await asyncio.to_thread(instance.stop)
    started = time.monotonic()
    instance.spawn()
    try:
        await asyncio.to_thread(wait_ready, instance, 30.0)
    except RuntimeError as exc:
        c.incident(
            "no-start-with-store-down",
            f"{instance.name} did not start while PostgreSQL was unreachable",
            str(exc)[-1500:],
        )
        return
    status = await _wait_health(instance.target, NOT_SERVING, 3.0)
    if status != NOT_SERVING:
        c.incident(
            "health-blind",
            f"{instance.name} reports postgres {_name(status)} while PostgreSQL is unreachable",
        )
        return
    c.note(
        f"{instance.name} started with PostgreSQL unreachable in "
        f"{time.monotonic() - started:.1f} s; health 'postgres' NOT_SERVING"
    )


async def _heal_pg_and_check_health(c: FaultController) -> None:
    c.proxy.pass_through()
    instance = c.cluster.instances[0]
    if not instance.alive():
        try:
            await asyncio.to_thread(c.cluster.restart, instance)
        except RuntimeError as exc:
            c.incident("restart-failed", f"{instance.name} did not start after heal", str(exc))
            return
    healed = time.monotonic()
    status = await _wait_health(instance.target, SERVING, HEALTH_WAIT_S)
    if status == SERVING:
        waited = time.monotonic() - healed
        c.note(f"{instance.name} health 'postgres' SERVING {waited:.1f} s after heal")
    else:
        c.incident(
            "no-recovery",
            f"{instance.name} still reports postgres {_name(status)} "
            f"{HEALTH_WAIT_S:.0f} s after PostgreSQL came back",
        )


async def _wait_health(target: str, wanted: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await asyncio.to_thread(health, target, "postgres")
        if status == wanted or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(0.1)


def _name(status: int | None) -> str:
    if status is None:
        return "no answer"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


FAULTS: tuple[Fault, ...] = (
    Fault("none"),
    Fault("redis-paused", _pause_redis, _resume_redis, feed_down=True),
    Fault("redis-conns-killed", _noop, _noop, hold=_kill_connections, feed_down=True),
    Fault("redis-restarted", _kill_redis, _start_redis, feed_down=True),
    Fault("pg-unreachable", _pg_unreachable, _pg_heal),
    Fault("pg-slow", _pg_slow, _pg_heal),
    Fault("deadline-storm", _storm, _calm),
    Fault("instance-killed", _kill_instance, _restart_killed),
    Fault("pg-down-restart", _restart_while_pg_down, _heal_pg_and_check_health),
)
