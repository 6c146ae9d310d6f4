"""Shared pieces of the fault-injection scenarios: backends we may break, load, tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from prometheus_client.parser import text_string_to_metric_families

# Every scenario's table; printed in the terminal summary and written to a file.
REPORT: list[str] = []


# --- backends a test may stop -------------------------------------------------


def valkey_pid(url: str) -> int:
    """The process id of the Valkey behind ``url`` (INFO server)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def client_connections(url: str) -> int:
    """Connections the Valkey behind ``url`` has open, not counting the one asking."""
    client = redis.Redis.from_url(url)
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


@contextlib.contextmanager
def frozen(pid: int) -> Any:
    """SIGSTOP a process of ours for the block, SIGCONT it after (whatever happened)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class PrivatePostgres:
    """An embedded PostgreSQL (pgserver) of the fault suite alone, stoppable.

    Never the machine's shared server: this one lives under a temporary
    folder, listens on a unix socket there, and is deleted afterwards.
    """

    def __init__(self, folder: Path) -> None:
        import pgserver

        folder.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(folder, cleanup_mode="delete")
        self.admin_dsn: str = self._server.get_uri()

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, the socket disappears."""
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        """Start it again on the same socket (pgserver's own start-up path)."""
        self._server.ensure_postgres_running()

    def running(self) -> bool:
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self._server.pgdata)
        return info is not None and info.is_running()

    def close(self) -> None:
        if not self.running():
            with contextlib.suppress(Exception):
                self.start()
        self._server.cleanup()


# --- metrics ---------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (n, sample_labels), value in samples.items()
        if n == name and set(labels.items()) <= set(sample_labels)
    )


# --- load --------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of a bounded load: codes, latencies, and what was checked."""

    codes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def add(self, code: str, seconds: float, status: str | None = None) -> None:
        self.codes[code] += 1
        self.latencies.append(seconds)
        if status is not None:
            self.statuses[status] += 1

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    def errors(self) -> dict[str, int]:
        return {code: n for code, n in sorted(self.codes.items()) if code != "OK"}

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(call: Awaitable[Any]) -> tuple[str, float, Any]:
    """Await one RPC; (code name, seconds, response or None)."""
    started = time.perf_counter()
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return error.code().name, time.perf_counter() - started, None
    except asyncio.CancelledError:
        # grpc.aio raises this for a call the client cancelled itself; our own
        # task being cancelled must still propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return "CANCELLED", time.perf_counter() - started, None
    return "OK", time.perf_counter() - started, response


async def run_workers(
    workers: int, until: Callable[[], bool], one: Callable[[int], Awaitable[None]]
) -> None:
    """Run ``one(worker_index)`` in a loop on ``workers`` tasks until ``until()``."""

    async def loop(index: int) -> None:
        while not until():
            await one(index)

    await asyncio.gather(*(loop(i) for i in range(workers)))


def table(title: str, rows: list[tuple[str, object]]) -> str:
    """A two-column table; appended to the report and returned."""
    width = max(len(name) for name, _ in rows)
    line = "-" * (width + 3 + max(len(str(v)) for _, v in rows))
    text = "\n".join(
        [f"== {title} ==", line, *(f"{name:<{width}} | {value}" for name, value in rows), line]
    )
    REPORT.append(text)
    print("\n" + text)
    return text


# --- data the scenarios write and check ---------------------------------------


def experiment_request(experiment_id: str, *, running: bool = True) -> Any:
    """An upsert of a two-variant experiment whose name and description encode its id."""
    from mcprouter.v1 import router_service_pb2 as rs
    from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant

    status = (
        ExperimentStatus.EXPERIMENT_STATUS_RUNNING
        if running
        else ExperimentStatus.EXPERIMENT_STATUS_DRAFT
    )
    experiment = Experiment(
        experiment_id=experiment_id,
        name=f"name-of-{experiment_id}",
        description=f"description of {experiment_id}",
        status=status,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
    )
    return rs.RouteDataRequest(
        upsert_experiment=rs.UpsertExperimentOperation(experiment=experiment)
    )


def profile_request(user_id: str) -> Any:
    """An upsert of a profile whose attributes encode its id."""
    from mcprouter.v1 import router_service_pb2 as rs
    from mcprouter.v1.experiment_pb2 import UserProfile

    profile = UserProfile(user_id=user_id, attributes={"owner": user_id, "tier": user_id[-1]})
    return rs.RouteDataRequest(upsert_user_profile=rs.UpsertUserProfileOperation(profile=profile))


def get_experiment(experiment_id: str) -> Any:
    from mcprouter.v1 import router_service_pb2 as rs

    return rs.RouteDataRequest(
        get_experiment=rs.GetExperimentOperation(experiment_id=experiment_id)
    )


def get_profile(user_id: str) -> Any:
    from mcprouter.v1 import router_service_pb2 as rs

    return rs.RouteDataRequest(get_user_profile=rs.GetUserProfileOperation(user_id=user_id))


def status_name(response: Any) -> str:
    from mcprouter.v1.serve_status_pb2 import ServeStatus

    return str(ServeStatus.Name(response.status).removeprefix("SERVE_STATUS_"))
