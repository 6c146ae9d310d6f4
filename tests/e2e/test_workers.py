"""``serve --workers 2``: real processes on 127.0.0.1 behind one port.

One server (a supervisor, two workers, the ClickHouse host, a ``chroma
run``) serves the module; the SDK's pool of channels reaches both workers,
which tell themselves apart by the ``instance`` (host/pid/suffix) of Stats.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mcprouter.client import (
    EmbeddingItem,
    Event,
    Experiment,
    ExperimentStatus,
    RouterError,
    SyncRouterClient,
    Variant,
)
from tests.e2e.conftest import (
    NOT_SERVING,
    SERVING,
    Launcher,
    ServerProcess,
    free_port,
    health_status,
    wait_for,
)

CHANNELS = 16  # 2 workers: all 16 connections on one worker has odds 2 / 2**16


def pid_of(instance: str) -> int:
    return int(instance.split("/")[1])


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_pids(client: SyncRouterClient, calls: int = 3 * CHANNELS) -> set[int]:
    """The pids of the workers that answered ``calls`` Stats calls (taken in turn)."""
    return {pid_of(client.stats(timeout=5).instance) for _ in range(calls)}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def workers_server(
    launch_server: Launcher, metrics_port: int, health_port: int
) -> Iterator[ServerProcess]:
    with launch_server(
        "workers",
        WORKERS="2",
        METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        HEALTH_LISTEN_ADDRESS=f"127.0.0.1:{health_port}",
        STATS_PUBLISH_INTERVAL_S="0.3",
        MAX_CONNECTION_AGE_S="2",
    ) as server:
        yield server


@pytest.fixture
def client(workers_server: ServerProcess) -> Iterator[SyncRouterClient]:
    with SyncRouterClient.connect(workers_server.target, channels=CHANNELS) as c:
        c.wait_until_ready(timeout=10)
        yield c


def test_both_workers_answer_on_one_port(client: SyncRouterClient, health_port: int) -> None:
    assert client.channels == CHANNELS
    pids = worker_pids(client)
    assert len(pids) == 2, pids
    # The health-only port is shared the same way.
    for _ in range(4):
        assert health_status(f"127.0.0.1:{health_port}") == SERVING


def test_a_write_on_one_worker_is_read_on_every_worker(client: SyncRouterClient) -> None:
    experiment = "workers-exp"
    client.upsert_experiment(
        Experiment(
            experiment_id=experiment,
            name="workers",
            status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            variants=[Variant(name="control", weight=50), Variant(name="treatment", weight=50)],
        )
    )
    for _ in range(CHANNELS):
        assert client.get_experiment(experiment).value.name == "workers"
    # Events ingested through both workers land in the one ClickHouse (the
    # host process): every worker's analytics counts all of them.
    now = datetime.now(UTC).replace(microsecond=0)
    for index in range(CHANNELS):
        event = Event(
            event_id=f"workers-ev-{index}",
            experiment_id=experiment,
            user_id=f"user-{index}",
            variant="treatment",
            event_type="conversion",
            value=1.0,
        )
        event.timestamp.FromDatetime(now)
        client.track_events([event])
    day = now.replace(hour=0, minute=0, second=0)
    client.invalidate(experiment_id=experiment)
    for _ in range(4):
        analytics = client.get_analytics(experiment, day).value
        treatment = next(v for v in analytics.variants if v.variant == "treatment")
        assert treatment.exposed_users == CHANNELS
        assert treatment.total_value == pytest.approx(CHANNELS)
    # Embeddings written through one worker are searched by every one (one Chroma server).
    client.upsert_embeddings(
        "workers_col",
        [EmbeddingItem(id="a", embedding=[1.0, 0.0]), EmbeddingItem(id="b", embedding=[0.0, 1.0])],
    )
    for _ in range(4):
        assert [hit.id for hit in client.search("workers_col", [0.9, 0.1], 1).value.hits] == ["a"]


def per_process_operations(client: SyncRouterClient) -> dict[str, int]:
    """Each worker's own ``total_operations``, from Stats calls taken in turn."""
    totals: dict[str, int] = {}
    for _ in range(3 * CHANNELS):
        answer = client.stats(timeout=5)
        totals[answer.instance] = answer.total_operations
    return totals


def test_fleet_stats_sum_every_worker(client: SyncRouterClient) -> None:
    for _ in range(2 * CHANNELS):
        client.get_cached(["experiment:workers-fleet"])
    after_calls = per_process_operations(client)
    assert len(after_calls) == 2
    assert sum(after_calls.values()) >= 2 * CHANNELS
    # Both workers have published since the calls once the fleet's sum reaches
    # what each had counted by then (counters only grow).
    fleets: list[Any] = []

    def published() -> bool:
        fleets.append(client.stats(fleet=True, timeout=5))
        return fleets[-1].total_operations >= sum(after_calls.values())

    assert wait_for(published, timeout_s=15, interval_s=0.05), fleets[-1:]
    fleet = fleets[-1]
    assert fleet.processes == 2, fleet
    assert {pid_of(i) for i in fleet.instances} == worker_pids(client)
    assert fleet.max_age.ToMilliseconds() < 1000
    later = per_process_operations(client)
    assert later.keys() == after_calls.keys()
    # The fleet's sum is of values published no later than now.
    assert fleet.total_operations <= sum(later.values())
    process = client.stats(timeout=5)
    assert process.processes == 1 and list(process.instances) == [process.instance]


def test_metrics_show_both_workers(metrics_port: int, client: SyncRouterClient) -> None:
    worker_pids(client)  # some traffic on both
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        page = reply.read().decode()
    requests = [
        line for line in page.splitlines() if line.startswith("mcprouter_rpc_requests_total")
    ]
    assert any('worker="0"' in line for line in requests)
    assert any('worker="1"' in line for line in requests)
    assert 'mcprouter_worker_up{worker="0"} 1.0' in page
    assert 'mcprouter_worker_up{worker="1"} 1.0' in page
    assert page.count("# TYPE mcprouter_rpc_requests_total counter") == 1


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_a_killed_clickhouse_host_is_restarted_with_its_data(
    workers_server: ServerProcess, client: SyncRouterClient
) -> None:
    workers = worker_pids(client)
    others = children_of(workers_server.process.pid) - workers
    host = {pid for pid in others if "chroma" not in cmdline(pid)}
    assert len(host) == 1, (others, [cmdline(p) for p in others])
    (host_pid,) = host
    os.kill(host_pid, signal.SIGKILL)
    now = datetime.now(UTC).replace(microsecond=0)
    event = Event(
        event_id="workers-after-host-restart",
        experiment_id="workers-exp",
        user_id="user-late",
        variant="treatment",
        event_type="conversion",
        value=1.0,
    )
    event.timestamp.FromDatetime(now)

    # Sent until stored: UNAVAILABLE while the host is down (the SDK resends).
    def stored() -> bool:
        try:
            client.track_events([event], timeout=10)
        except RouterError:
            return False
        return True

    assert wait_for(stored, timeout_s=30, interval_s=0.3), "the event was never stored"
    assert not alive(host_pid)
    client.invalidate(experiment_id="workers-exp")
    analytics = client.get_analytics("workers-exp", now.replace(hour=0, minute=0, second=0))
    treatment = next(v for v in analytics.value.variants if v.variant == "treatment")
    assert treatment.exposed_users == CHANNELS + 1  # the events before the kill, and this one
    assert any(
        "clickhouse-host" in line and "died with exit code -9" in line
        for line in workers_server.log().splitlines()
    )


def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(
    workers_server: ServerProcess, client: SyncRouterClient
) -> None:
    before = worker_pids(client)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Every call is answered meanwhile: reads are resent on UNAVAILABLE, and
    # the pool's channels reconnect, to the surviving worker.
    failures = 0
    for _ in range(4 * CHANNELS):
        try:
            client.get_experiment("workers-exp", timeout=5)
        except RouterError:
            failures += 1
    assert failures == 0
    # The supervisor restarts it; connections made from then on reach it
    # (SO_REUSEPORT places connections, once).
    restarted: set[int] = set()

    def a_new_worker_answers() -> bool:
        with SyncRouterClient.connect(workers_server.target, channels=CHANNELS) as fresh:
            restarted.update(worker_pids(fresh) - before)
        return bool(restarted)

    assert wait_for(a_new_worker_answers, timeout_s=30, interval_s=0.2), before
    # The open client's connections, moved to the survivor, come back to it
    # too: MAX_CONNECTION_AGE_S closes them, and gRPC reconnects.
    assert wait_for(lambda: restarted <= worker_pids(client), timeout_s=15, interval_s=0.2)
    assert not alive(victim)
    assert failures <= 2
    assert "died with exit code -9" in workers_server.log()
    served = client.get_experiment("workers-exp")
    assert served.value.name == "workers"


def test_a_port_in_use_fails_the_start_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "DATA_DIR": str(tmp_path / "data"),
            "WORKERS": "2",
        }
        done = subprocess.run(
            [sys.executable, "-m", "mcprouter.server.cli", "serve"],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot listen on" in done.stderr
    assert not (tmp_path / "data" / "valkey").exists()  # nothing was started


def test_sigterm_drains_every_worker_and_exits_zero(launch_server: Launcher) -> None:
    with launch_server("workers-drain", WORKERS="2", DRAIN_DELAY_S="1.0") as server:
        with SyncRouterClient.connect(server.target, channels=CHANNELS) as client:
            pids = worker_pids(client)
        assert len(pids) == 2
        children = children_of(server.process.pid)
        assert pids <= children
        server.process.send_signal(signal.SIGTERM)
        # During the drain delay every worker still answers, NOT_SERVING.
        assert wait_for(
            lambda: health_status(server.target) == NOT_SERVING, timeout_s=5, interval_s=0.05
        )
        assert server.process.wait(timeout=30) == 0
        assert not any(alive(pid) for pid in children)
        log = server.log()
        assert "worker-0" in log and "exited with 0" in log
        assert "supervisor stopped" in log
