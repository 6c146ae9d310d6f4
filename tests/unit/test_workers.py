"""The parts of ``serve --workers N`` that need no server: counts, frames, merges, sums."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from mcprouter.server.clickhouse import host
from mcprouter.server.fleet import decode, encode, total
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.server.workers import resolve_workers
from mcprouter.server.workers.metrics import FleetCollector, merge
from mcprouter.server.workers.supervisor import reserve_port
from mcprouter.v1.serve_status_pb2 import DataType


def test_auto_is_the_cores_this_process_may_use() -> None:
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    with pytest.raises(ValueError):
        resolve_workers(0)


def test_frames_round_trip_datetimes_and_numbers() -> None:
    value = {
        "sql": "SELECT 1",
        "parameters": {"start": datetime(2026, 1, 2, 3, tzinfo=UTC), "n": 2**63 - 1, "x": 0.5},
        "rows": [["a", 1, 2.5]],
    }
    buffer = bytearray(host.encode(value))

    def read(size: int) -> bytes:  # a socket: at most ``size``, here at most 3 at a time
        chunk = bytes(buffer[: min(size, 3)])
        del buffer[: len(chunk)]
        return chunk

    body = host.read_frame(read)
    assert body is not None
    assert host.decode(body) == value
    assert host.read_frame(read) is None  # a clean end of stream


def test_a_frame_cut_short_is_a_connection_error() -> None:
    frame = host.encode({"op": "query"})
    data = [frame[:-1]]
    with pytest.raises(ConnectionError):
        host.read_frame(lambda size: data.pop(0) if data else b"")


def test_the_supervisor_reserves_one_port_for_every_worker() -> None:
    with reserve_port("127.0.0.1:0") as address:
        port = int(address.rsplit(":", 1)[1])
        assert port > 0
        # A worker binds the same port (SO_REUSEPORT) and listens on it.
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        worker.close()


def _page(value: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests.", ("code",), registry=registry)
    counter.labels("OK").inc(value)
    return generate_latest(registry).decode()


def test_worker_pages_merge_into_one_family_labelled_by_worker() -> None:
    families = merge([("0", _page(2)), ("1", _page(3))])
    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector([SimpleNamespace(restarts=0), SimpleNamespace(restarts=1)], [])
    collector._families = families  # as after a refresh
    collector._up = [True, False]
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert 'demo_requests_total{code="OK",worker="0"} 2.0' in text
    assert 'demo_requests_total{code="OK",worker="1"} 3.0' in text
    assert 'mcprouter_worker_up{worker="1"} 0.0' in text
    assert 'mcprouter_worker_restarts_total{worker="1"} 1.0' in text


def test_published_counters_round_trip_and_sum() -> None:
    first, second = CacheStats(), CacheStats()
    second.started_at = first.started_at - timedelta(minutes=5)
    first.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.HIT, 3)
    first.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.MISS)
    second.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.HIT, 1)
    second.record(DataType.DATA_TYPE_SEARCH, Outcome.LOAD, 2)
    for stats in (first, second):
        stats.operation()
        stats.dedup_hit(2)
    entry = decode(encode(second.snapshot(), published_at=100.0, interval_s=5.0))
    assert entry.published_at == 100.0 and entry.interval_s == 5.0
    assert entry.snapshot == second.snapshot()
    summed = total([first.snapshot(), entry.snapshot])
    assert summed.total_operations == 2
    assert summed.dedup_hits == 4
    assert summed.per_type[DataType.DATA_TYPE_EXPERIMENT] == {Outcome.HIT: 4, Outcome.MISS: 1}
    assert summed.per_type[DataType.DATA_TYPE_SEARCH] == {Outcome.LOAD: 2}
    assert summed.started_at == second.started_at
    assert summed.hit_rate == pytest.approx(4 / 5)


def test_a_garbled_entry_is_refused() -> None:
    with pytest.raises(ValueError):
        decode(b'{"published_at": 1}')
