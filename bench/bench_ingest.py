"""Benchmark of single-event ``track_events`` over gRPC, against the bare server.

SDKs send one event per user action, so the ingest path that matters is many
concurrent one-event requests. This starts the real server (``mcp-router
serve``: embedded chDB in its own folder, Redis and PostgreSQL of the
machine, its own database and key namespace) and the bare grpc.aio
RouterService (a prebuilt answer: the ceiling of Python gRPC here), and at
each concurrency alternates rounds of

* ``ingest``: closed-loop ``track_events`` requests of one new event each
  (every id distinct; dedup claim, group-committed ClickHouse insert,
  acknowledgement after the insert, done record, real-time counters);
* ``bare``: the same requests answered by the bare server.

It prints RPS, p50/p99 and server CPU µs per RPC (the server's own
counters, ``_cpu.py``) per cell, the ingest/bare RPS ratio of each round and
their median; then it stops the server and counts the bench's rows in its
chDB folder: every event acknowledged STORED must be there exactly once.
Prints figures; asserts nothing about time.

Run: ``.venv/bin/python bench/bench_ingest.py [--quick] [--inserts N]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import uvloop
from _common import Channels, ServerProcess, free_port, table
from _cpu import Cell, measure
from _data import bench_run
from _servers import bare_server, router_server

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from mcprouter.v1.serve_status_pb2 import ServeStatus

CHANNELS = 8
EXPERIMENT = "bench-ingest"
VARIANTS = ("control", "treatment")


class Events:
    """One-event requests with ids never sent before in this run."""

    def __init__(self, run: str) -> None:
        self._run = run
        self._next = 0
        self._at = datetime.now(UTC)

    def request(self, _n: int) -> rs.RouteDataRequest:
        """The next single-event request."""
        i = self._next
        self._next += 1
        event = Event(
            event_id=f"{self._run}-{i}",
            experiment_id=EXPERIMENT,
            user_id=f"u{i % 10_000}",
            variant=VARIANTS[i % 2],
            event_type="exposure",
            value=1.0,
        )
        event.timestamp.FromDatetime(self._at)
        return rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[event]))


def stored_rows(data_dir: Path) -> tuple[int, int]:
    """Rows and distinct event ids of the bench experiment in a stopped server's chDB."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir / 'clickhouse'}")
    try:
        result = client.query(
            "SELECT count(), uniqExact(event_id) FROM events WHERE experiment_id = {e:String}",
            parameters={"e": EXPERIMENT},
        )
        rows, distinct = result.result_rows[0]
        return int(rows), int(distinct)
    finally:
        client.close()


def stop_if_running(server: ServerProcess) -> None:
    """Stop ``server`` unless the run already stopped it."""
    if server.process is not None and server.process.poll() is None:
        server.stop()


def row(label: str, cell: Cell) -> list[object]:
    r = cell.result
    return [
        label,
        f"{r.rps:,.0f}",
        f"{r.p(50) / 1000:.2f}",
        f"{r.p(99) / 1000:.2f}",
        f"{cell.us_per_rpc:,.0f}",
        f"{r.requests:,}",
        ", ".join(f"{code} {n}" for code, n in sorted(r.error_codes.items())) or "0",
    ]


async def run(args: argparse.Namespace) -> None:
    async with bench_run(args.postgres_dsn, args.redis_url, "ingest", ":") as run:
        token, tmp, stack, backends = run.token, run.tmp, run.stack, run.backends
        dsn, namespace = run.dsn, run.namespace
        server = router_server(
            "ingest",
            free_port(),
            {
                "POSTGRES_DSN": dsn,
                "REDIS_URL": backends.redis_url,
                "KEY_NAMESPACE": namespace,
                "INGEST_MAX_CONCURRENT_INSERTS": str(args.inserts),
            },
            tmp,
        )
        server.start(tmp)
        stack.callback(stop_if_running, server)
        await server.wait_healthy(timeout_s=120)
        channels = Channels(server.target, CHANNELS)
        experiment = Experiment(
            experiment_id=EXPERIMENT,
            name="ingest benchmark",
            status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            variants=[Variant(name=v, weight=50) for v in VARIANTS],
        )
        await channels.stubs[0].RouteData(
            rs.RouteDataRequest(
                upsert_experiment=rs.UpsertExperimentOperation(experiment=experiment)
            ),
            timeout=30,
        )
        events = Events(token)
        sample = await channels.stubs[0].RouteData(events.request(0), timeout=30)
        responses = tmp / "responses.json"
        responses.write_text(json.dumps({"track_events": sample.SerializeToString().hex()}))
        bare = bare_server(free_port(), responses, tmp)
        bare.start(tmp)
        stack.callback(bare.stop)
        await bare.wait_healthy()
        bare_channels = Channels(bare.target, CHANNELS)
        stack.push_async_callback(bare_channels.close)

        # Warm-up: connections, pools, the experiment in the L1, first inserts.
        warm = await measure(server, channels, events.request, concurrency=16, duration_s=2)
        await measure(bare, bare_channels, events.request, concurrency=16, duration_s=1)

        rows: list[list[object]] = []
        ratios: dict[int, list[float]] = {}
        stored_status = ServeStatus.SERVE_STATUS_STORED
        acknowledged = int(sample.status == stored_status)
        acknowledged += warm.result.statuses.get(stored_status, 0)
        for concurrency in args.concurrency:
            for round_no in range(1, args.rounds + 1):
                ingest = await measure(
                    server,
                    channels,
                    events.request,
                    concurrency=concurrency,
                    duration_s=args.duration,
                )
                base = await measure(
                    bare,
                    bare_channels,
                    events.request,
                    concurrency=concurrency,
                    duration_s=args.duration,
                )
                acknowledged += ingest.result.statuses.get(stored_status, 0)
                rows.append(row(f"ingest c={concurrency} #{round_no}", ingest))
                for code, message in ingest.result.first_errors.items():
                    print(f"ingest c={concurrency} #{round_no}: first {code}: {message}")
                rows.append(row(f"bare   c={concurrency} #{round_no}", base))
                ratio = ingest.result.rps / base.result.rps if base.result.rps else 0.0
                ratios.setdefault(concurrency, []).append(ratio)
        print(
            f"\nsingle-event track_events, {CHANNELS} channels, {args.duration:g} s per cell, "
            f"INGEST_MAX_CONCURRENT_INSERTS={args.inserts}"
        )
        print(table(["cell", "RPS", "p50 ms", "p99 ms", "CPU µs/RPC", "RPCs", "errors"], rows))
        print("\ningest / bare RPS (per round; median)")
        for concurrency, values in ratios.items():
            listed = ", ".join(f"{v:.2f}" for v in values)
            print(f"  c={concurrency}: {listed}; median {statistics.median(values):.2f}")
        await channels.close()
        server.stop()  # graceful: what is in flight completes first
        rows_stored, distinct = stored_rows(tmp / "ingest")
        verdict = "ok" if rows_stored == distinct == acknowledged else "MISMATCH"
        print(
            f"\nacknowledged STORED: {acknowledged:,}; in ClickHouse: {rows_stored:,} rows, "
            f"{distinct:,} distinct ids: {verdict} (an event that failed or timed out "
            f"at the client may be stored without an acknowledgement: see errors)"
        )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells (about a minute)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--inserts", type=int, default=4, help="INGEST_MAX_CONCURRENT_INSERTS")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 4.0, 2
    return args


if __name__ == "__main__":
    uvloop.run(run(parse()))
