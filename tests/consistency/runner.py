"""One run of the checker: start the cluster, drive load through the fault phases, check.

Order after the last phase: heal everything, stop the load, settle the events
no attempt got an answer for (bounded), wait for convergence (bounded),
stop the instances with SIGTERM (pending batches are flushed), count each
instance's ClickHouse rows, then check the whole history. Every process,
the database and the temporary folder are removed whatever happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mcprouter.v1 import router_service_pb2 as rs
from tests.consistency import checks
from tests.consistency.cluster import Cluster, ClusterSettings
from tests.consistency.convergence import converge
from tests.consistency.faults import FaultController, Timing
from tests.consistency.history import History, Violation
from tests.consistency.report import RunFacts, evidence, render
from tests.consistency.rpc import Channels, call
from tests.consistency.stores import count_events
from tests.consistency.workload import Conditions, Workload

EVENT_BATCH = 50


@dataclass(frozen=True)
class Options:
    seed: int = 1
    duration_s: float = 60.0
    bound_ms: float = 100.0
    fault_bound_ms: float | None = None  # default: L1 max age + retry interval
    retry_interval_ms: float | None = None  # default: fault length + 500 ms (see faults.py)
    l1_max_age_s: float = 1.0
    clients: int = 6
    instances: int = 2
    settle_s: float = 15.0
    fault_s: float = 2.0
    p_tight: float = 0.05  # share of calls with a 10-100 ms deadline (outside the storm)
    p_cancel: float = 0.04  # share of calls the client cancels after 0-50 ms
    phases: tuple[str, ...] | None = None  # default: every phase of faults.FAULTS
    relax_all_faults: bool = False  # fault bound in every fault window, not only Redis ones
    keep: bool = False

    def retry_interval_s(self) -> float:
        # Follow-ups retry after 0.5, 1, 2, 4 ... s (retries.py), so after an
        # outage of F seconds the next attempt comes within F + 0.5 s.
        if self.retry_interval_ms is not None:
            return self.retry_interval_ms / 1000
        return self.fault_s + 0.5

    def fault_bound_s(self) -> float:
        if self.fault_bound_ms is not None:
            return self.fault_bound_ms / 1000
        return self.l1_max_age_s + self.retry_interval_s()


@dataclass
class Result:
    violations: list[Violation]
    report: str


async def run(options: Options, log: Callable[[str], None] = lambda _: None) -> Result:
    folder = Path(tempfile.mkdtemp(prefix="mcprouter-consistency-"))
    settings = ClusterSettings(instances=options.instances, l1_max_age_s=options.l1_max_age_s)
    cluster = Cluster(folder, settings)
    try:
        log(f"starting {options.instances} instances under {folder}")
        await asyncio.to_thread(cluster.start)
        return await _run(cluster, options, log)
    finally:
        await asyncio.to_thread(cluster.close)
        if options.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


async def _run(cluster: Cluster, options: Options, log: Callable[[str], None]) -> Result:
    assert cluster.chroma is not None
    history = History(time.monotonic())
    conditions = Conditions(p_tight=options.p_tight, p_cancel=options.p_cancel)
    channels = Channels([i.target for i in cluster.instances])
    bounds = checks.Bounds(options.bound_ms / 1000, options.fault_bound_s())
    timing = Timing(fault_s=options.fault_s, grace_s=bounds.fault_bound_s)
    workload = Workload(
        history, cluster.instances, channels, conditions, seed=options.seed, clients=options.clients
    )
    controller = FaultController(
        cluster, conditions, timing, log, options.phases, options.relax_all_faults
    )
    notes: list[str] = []
    try:
        await workload.setup()
        stop = False
        load = asyncio.create_task(workload.run(lambda: stop))
        try:
            phases = asyncio.create_task(controller.run(options.duration_s))
            while not phases.done():
                await asyncio.sleep(0.5)
                if load.done():  # a client crashed: stop at once, with its error
                    phases.cancel()
                    await load
            await phases
            log("phases done")
        finally:
            await controller.heal_everything()
            stop = True
            await load
        conditions.phase = "final"
        await _settle_events(workload, options.settle_s)
        log("converging")
        convergence = await converge(
            channels,
            [i.name for i in cluster.instances],
            workload.universe,
            cluster.direct_dsn,
            cluster.chroma.url,
            options.settle_s,
        )
        notes.append(await _l1_hits(channels, [i.name for i in cluster.instances]))
    finally:
        await channels.close()
    codes = await asyncio.to_thread(cluster.stop_instances)
    notes[:0] = controller.notes
    notes += [f"{name} exited with {code} on SIGTERM" for name, code in codes.items() if code]
    counts = {
        i.name: await asyncio.to_thread(count_events, i.clickhouse_path) for i in cluster.instances
    }
    stops = {node: at for i in cluster.instances for node, at in i.graceful_stops.items()}
    violations = checks.check_codes(history, stops)
    read_violations, figures = checks.check_reads(history, controller.windows, bounds)
    violations += read_violations + checks.check_sticky(history)
    event_violations, event_figures = checks.check_events(history, workload.events, counts)
    violations += event_violations + controller.incidents
    violations += checks.check_convergence(history, convergence)
    title = (
        f"consistency: seed {options.seed}, {options.instances} instances, "
        f"{options.clients} clients, L1 max age {options.l1_max_age_s:g} s, "
        f"bound {options.bound_ms:g} ms, fault bound {bounds.fault_bound_s * 1000:.0f} ms"
    )
    if options.keep:
        _dump(history, cluster.folder / "history.jsonl")
        (cluster.folder / "violations.txt").write_text(evidence(violations) + "\n")
    facts = RunFacts(
        title, controller.windows, violations, figures, convergence, event_figures, notes
    )
    return Result(violations, render(history, facts))


async def _settle_events(workload: Workload, timeout_s: float) -> None:
    """Resend events no attempt got an answer for, until answered or ``timeout_s``."""
    rng = random.Random(workload.seed)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answered = {e for op in workload.history.ops for e in op.event_outcomes}
        pending = [workload.events[e] for e in workload.events if e not in answered]
        if not pending:
            return
        for start in range(0, len(pending), EVENT_BATCH):
            batch = pending[start : start + EVENT_BATCH]
            index = rng.randrange(len(workload.instances))
            await workload.send_events(-2, rng, index, batch, 2.0, None, attempts=1)
        await asyncio.sleep(0.5)


def _dump(history: History, path: Path) -> None:
    """Every op as one JSON line (kept runs only), for digging into evidence."""
    with path.open("w") as out:
        for op in history.ops:
            record = dataclasses.asdict(op)
            record["invoke"] -= history.t0
            record["complete"] -= history.t0
            out.write(json.dumps(record, default=str) + "\n")


async def _l1_hits(channels: Channels, names: list[str]) -> str:
    """Proof that the L1 was on: its hits per instance (since that process started)."""
    shown = []
    for name, stub in zip(names, channels.stubs, strict=True):
        outcome = await call(stub.Stats, rs.StatsRequest(), deadline_s=3.0)
        if outcome.code == "OK":
            hits = sum(d.local_hits for d in outcome.response.data_types)
            shown.append(f"{name} {hits}")
        else:
            shown.append(f"{name} {outcome.code}")
    return "L1 hits since each instance's last start: " + ", ".join(shown)
