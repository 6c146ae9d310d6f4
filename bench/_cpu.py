"""Server CPU per RPC, from the server processes' own counters.

``/proc/<pid>/stat`` utime + stime of a server and every process under it
(supervisor, workers, ClickHouse host, Chroma server; not Redis or
PostgreSQL): a figure that does not depend on how loaded the machine is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from _common import Channels, LoadResult, ServerProcess, run_closed_loop

from mcprouter.v1 import router_service_pb2 as rs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every process under it, by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


@dataclass
class Cell:
    """One measured run: the load result and the server CPU it cost."""

    result: LoadResult
    cpu_s: float

    @property
    def us_per_rpc(self) -> float:
        """Server CPU per successful RPC, in microseconds."""
        return self.cpu_s / self.result.requests * 1e6 if self.result.requests else 0.0

    @property
    def rps_per_cpu_s(self) -> float:
        """Successful RPCs per second of server CPU."""
        return self.result.requests / self.cpu_s if self.cpu_s else 0.0


async def measure(
    server: ServerProcess,
    channels: Channels,
    factory: Callable[[int], rs.RouteDataRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 10_000_000,
) -> Cell:
    """Run the closed loop; the server tree's CPU counters before and after."""
    assert server.process is not None
    before = tree_cpu_seconds(server.process.pid)
    result = await run_closed_loop(
        channels.stubs,
        factory,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
    )
    after = tree_cpu_seconds(server.process.pid)
    # A process that exited between the two reads counts from zero; none should.
    spent = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    return Cell(result, spent)
