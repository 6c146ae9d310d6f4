"""SIGTERM under event-ingestion load.

Health turns NOT_SERVING first and the server keeps serving through the
drain delay (no call fails during it), calls in flight finish, every event
acknowledged STORED is in ClickHouse once the process is gone, and the
process exits without the grace period running out.

Order is asserted on a sequence of events as this test's event loop saw them
(health replies, call starts and ends, SIGTERM), never on elapsed time; the
milliseconds in the report are measurements only. The grace is much longer
than the wait for the exit, so an exit seen at all shows nothing held it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.conditions import eventually
from tests.faults.conftest import Launch
from tests.faults.harness import Tally, experiment_request, table, timed

pytestmark = pytest.mark.e2e

# Far longer than EXIT_WAIT_S: the process exiting at all shows that no call
# (and no open Watch) kept it waiting for the grace to run out.
GRACE_S = 300.0
DRAIN_S = 1.0
# Bound on waiting for the exit: drain delay, then closing chDB, Chroma, pools.
EXIT_WAIT_S = 60.0
WORKERS = 8
EVENTS_PER_CALL = 5
# Calls answered OK before SIGTERM is sent: the load is running.
CALLS_BEFORE_SIGTERM = 40

COUNT_SCRIPT = """
import json, sys
import chdb
conn = chdb.connect("file:" + sys.argv[1] + "?mode=ro")
cur = conn.cursor()
experiment_id = sys.argv[2]
assert experiment_id.replace("-", "").isalnum(), experiment_id  # quoted below
cur.execute(f"SELECT event_id FROM events FINAL WHERE experiment_id = '{experiment_id}'")
print(json.dumps([row[0] for row in cur.fetchall()]))
conn.close()
"""


def stored_event_ids(clickhouse_path: Path, experiment_id: str) -> list[str]:
    """Event ids in the server's embedded ClickHouse, read in a subprocess (read-only).

    chDB allows one data path per process, and the test process must not
    hold the server's.
    """
    done = subprocess.run(
        [sys.executable, "-c", COUNT_SCRIPT, str(clickhouse_path), experiment_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


async def test_sigterm_under_load_drains_and_keeps_acknowledged_events(launch: Launch) -> None:
    with launch(SHUTDOWN_GRACE_S=GRACE_S, INGEST_MAX_DELAY_MS=100, DRAIN_DELAY_S=DRAIN_S) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            experiment_id = f"gs-{uuid.uuid4().hex[:6]}"
            await stub.RouteData(experiment_request(experiment_id), timeout=10)

            # Every event this test observes takes the next number: one event
            # loop, so the numbers are the order things happened in here.
            sequence = itertools.count()
            health_changes: list[tuple[int, float, int]] = []  # (seq, seconds, status)
            watch_end: list[grpc.StatusCode] = []

            async def watch_health() -> None:
                stream = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=EXIT_WAIT_S
                )
                try:
                    async for reply in stream:
                        health_changes.append((next(sequence), time.monotonic(), reply.status))
                    watch_end.append(await stream.code())
                except grpc.aio.AioRpcError as error:
                    watch_end.append(error.code())  # the server went away

            watcher = asyncio.create_task(watch_health())
            sent: set[str] = set()
            acknowledged: set[str] = set()
            # (seq at start, seq at end, code); seconds in ``times`` for the report
            calls: list[tuple[int, int, str]] = []
            times: list[tuple[float, float]] = []
            tally = Tally()
            sigterm_seq: int | None = None
            stop_load = False

            async def worker(index: int) -> None:
                number = 0
                while not stop_load:
                    events = []
                    for _ in range(EVENTS_PER_CALL):
                        number += 1
                        event = Event(
                            event_id=f"{experiment_id}-w{index}-{number}",
                            experiment_id=experiment_id,
                            user_id=f"u{index}-{number % 17}",
                            variant=("control", "treatment")[number % 2],
                            event_type="conversion",
                            value=1.0,
                        )
                        event.timestamp.FromDatetime(datetime.now(UTC))
                        events.append(event)
                    request = rs.RouteDataRequest(
                        track_events=rs.TrackEventsOperation(events=events)
                    )
                    sent.update(e.event_id for e in events)
                    started, started_s = next(sequence), time.monotonic()
                    code, seconds, response = await timed(stub.RouteData(request, timeout=10))
                    calls.append((started, next(sequence), code))
                    times.append((started_s, started_s + seconds))
                    tally.add(code, seconds)
                    if response is not None:
                        acknowledged.update(
                            o.event_id
                            for o in response.track_events_result.outcomes
                            if o.status == ServeStatus.SERVE_STATUS_STORED
                        )
                    if code != "OK" and sigterm_seq is not None:
                        return  # refused after SIGTERM: this client stops

            load = asyncio.gather(*(worker(i) for i in range(WORKERS)))
            await eventually(
                lambda: sum(c == "OK" for _, _, c in calls) >= CALLS_BEFORE_SIGTERM,
                "load running",
            )
            sigterm_seq, sigterm_s = next(sequence), time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.process.wait, EXIT_WAIT_S)
            exited_s = time.monotonic()
            stop_load = True
            await load
            await watcher

    stored = set(stored_event_ids(server.folder / "data" / "clickhouse", experiment_id))
    not_serving = next(((q, t) for q, t, s in health_changes if s == 2), None)  # NOT_SERVING
    not_serving_seq = None if not_serving is None else not_serving[0]
    refused = sorted(
        (end, end_s) for (_, end, c), (_, end_s) in zip(calls, times, strict=True) if c != "OK"
    )
    first_refusal = refused[0] if refused else None
    before = [c for start, _, c in calls if start < sigterm_seq]
    lost = acknowledged - stored

    def ms_after_sigterm(seconds: float) -> str:
        return f"{(seconds - sigterm_s) * 1000:.0f} ms after SIGTERM"

    rows: list[tuple[str, object]] = [
        ("settings", f"DRAIN_DELAY_S={DRAIN_S:g} SHUTDOWN_GRACE_S={GRACE_S:.0f} "
         f"INGEST_MAX_DELAY_MS=100, {WORKERS} "
         f"workers x {EVENTS_PER_CALL} events/call, SIGTERM after {CALLS_BEFORE_SIGTERM} OK calls"),
        ("requests", tally.requests),
        ("codes", dict(sorted(tally.codes.items()))),
        ("calls started before SIGTERM", f"{len(before)}, not OK: "
         f"{sum(c != 'OK' for c in before)}"),
        ("health NOT_SERVING", "never seen" if not_serving is None
         else ms_after_sigterm(not_serving[1])),
        ("health watch ended", watch_end[0].name if watch_end else "never"),
        ("first refused call", "none" if first_refusal is None
         else ms_after_sigterm(first_refusal[1])),
        ("exit", f"code {code}, {exited_s - sigterm_s:.2f} s after SIGTERM "
         f"(grace {GRACE_S:.0f} s)"),
        ("events sent / acknowledged", f"{len(sent)} / {len(acknowledged)}"),
        ("events in ClickHouse", f"{len(stored)} (read-only chDB after exit)"),
        ("acknowledged but missing", len(lost)),
        ("stored but never sent", len(stored - sent)),
    ]  # fmt: skip
    table("Graceful shutdown under load (SIGTERM)", rows)

    assert code == 0
    assert not_serving_seq is not None and not_serving_seq > sigterm_seq
    if first_refusal is not None:
        assert not_serving_seq < first_refusal[0]
    # The drain: nothing that started before NOT_SERVING was seen (so every
    # call sent before SIGTERM) failed, and calls kept being served after it
    # (load balancers have time to move).
    started_before_drain = [c for start, _, c in calls if start < not_serving_seq]
    assert before and set(started_before_drain) == {"OK"}, started_before_drain
    assert any(c == "OK" for start, _, c in calls if start > not_serving_seq)
    # The server ended the Watch itself once shutdown began.
    assert watch_end == [grpc.StatusCode.OK], watch_end
    # Calls that race the shutdown are refused (UNAVAILABLE) or, when the
    # transport had taken them but no handler had, CANCELLED; none is lost.
    assert set(tally.codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, tally.codes
    assert acknowledged and not lost, sorted(lost)[:10]
    assert stored <= sent


async def test_an_open_health_watch_does_not_hold_shutdown(launch: Launch) -> None:
    # The grace is far longer than the wait below: a Watch that held shutdown
    # would keep the process alive (and the stream open) until it ran out.
    with launch(SHUTDOWN_GRACE_S=GRACE_S) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=EXIT_WAIT_S
            )
            first = await stream.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            server.process.send_signal(signal.SIGTERM)
            after: list[int] = []
            while (reply := await stream.read()) is not grpc.aio.EOF:
                after.append(reply.status)
            ended = await stream.code()
            code = await asyncio.to_thread(server.process.wait, EXIT_WAIT_S)
    # The server said NOT_SERVING, then closed the stream itself (OK), and exited.
    assert after == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert ended == grpc.StatusCode.OK
    assert code == 0
