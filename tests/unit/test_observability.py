"""Observability pieces without a server: settings, log formats, collector, exporter."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.observability.exporter import MetricsEndpoint
from mcprouter.server.observability.logs import REQUEST_ID, configure_logging, redact
from mcprouter.server.observability.metrics import RpcMetrics, ServerCollector
from mcprouter.server.observability.settings import parse_address
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:9464", ("localhost", 9464)),
        (":9464", (None, 9464)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_parse_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9464", "host:", "host:99999", "host:http"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|port"):
        parse_address(address)


def test_redact_masks_credentials() -> None:
    text = "connect postgresql://app:s3cr3t@db:5432/x failed; password=hunter2 token: abc"
    masked = redact(text)
    for secret in ("s3cr3t", "hunter2", "abc"):
        assert secret not in masked
    assert "postgresql://app:***@db:5432/x" in masked


@pytest.fixture
def restore_root_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_request_id_and_extras(restore_root_logging: object) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    token = REQUEST_ID.set("req-1")
    try:
        logging.getLogger("t").info("hello %s", "redis://u:pw@h", extra={"cache_key": "k"})
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("t").warning("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-1"
    assert first["cache_key"] == "k"
    assert first["msg"] == "hello redis://u:***@h"
    assert first["level"] == "INFO" and first["logger"] == "t"
    assert second["request_id"] == "-"


def test_text_lines_carry_request_id(restore_root_logging: object) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    token = REQUEST_ID.set("abc")
    try:
        logging.getLogger("t").info("x")
    finally:
        REQUEST_ID.reset(token)
    assert "[abc]: x" in stream.getvalue()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Inserts:
    inserts = 3
    inserted_rows = 120


def test_collector_reads_cache_stats_breaker_and_health() -> None:
    stats = CacheStats()
    stats.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.HIT, 5)
    stats.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.LOAD, 2)
    stats.record(DataType.DATA_TYPE_EXPERIMENT, Outcome.LOAD_ERROR)
    stats.record(DataType.DATA_TYPE_USER_PROFILE, Outcome.REDIS_ERROR)
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60)
    breaker.record_failure()
    registry = CollectorRegistry()
    registry.register(
        ServerCollector(stats, breaker, backends={"redis": 1, "postgres": 2}, inserts=Inserts())
    )
    got = samples(registry)
    assert got[("mcprouter_cache_outcomes_total",
                (("data_type", "experiment"), ("outcome", "hits")))] == 5  # fmt: skip
    assert got[("mcprouter_store_queries_total",
                (("data_type", "experiment"), ("result", "ok")))] == 2  # fmt: skip
    assert got[("mcprouter_store_queries_total",
                (("data_type", "experiment"), ("result", "error")))] == 1  # fmt: skip
    assert got[("mcprouter_redis_errors_total", ())] == 1
    assert got[("mcprouter_redis_breaker_state", (("state", "open"),))] == 1
    assert got[("mcprouter_redis_breaker_state", (("state", "closed"),))] == 0
    assert got[("mcprouter_backend_up", (("backend", "redis"),))] == 1
    assert got[("mcprouter_backend_up", (("backend", "postgres"),))] == 0
    assert got[("mcprouter_ingest_inserted_events_total", ())] == 120


def test_rpc_metrics_count_by_code() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    gauge = metrics.started("svc", "RouteData")
    metrics.finished("svc", "RouteData", "get_experiment", "NOT_FOUND", 0.003)
    gauge.dec()
    got = samples(registry)
    key = (("grpc_code", "NOT_FOUND"), ("grpc_method", "RouteData"), ("grpc_service", "svc"),
           ("operation", "get_experiment"))  # fmt: skip
    assert got[("mcprouter_rpc_requests_total", key)] == 1
    assert got[("mcprouter_rpc_in_flight", (("grpc_method", "RouteData"),
                                            ("grpc_service", "svc")))] == 0  # fmt: skip


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply


async def test_endpoint_serves_metrics_only() -> None:
    registry = CollectorRegistry()
    RpcMetrics(registry)
    endpoint = MetricsEndpoint(registry, "127.0.0.1", 0)
    port = await endpoint.start()
    try:
        ok = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK")
        assert b"mcprouter_rpc_in_flight" in ok
        assert (await http(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    finally:
        await endpoint.aclose()


def test_tracing_continues_the_callers_trace() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from mcprouter.server.observability.tracing import Tracing, trace_fields

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.span("svc", "RouteData", (("traceparent", parent),)) as span:
        assert trace_fields()["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        span.set_code("UNAVAILABLE")
    tracing.shutdown()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "svc/RouteData"
    assert finished.status.status_code == StatusCode.ERROR


def test_python_warnings_become_json_log_lines() -> None:
    import io
    import json
    import logging
    import warnings

    from mcprouter.server.observability.logs import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    # An earlier configure_logging in this process may have left capture "on"
    # under a showwarning that pytest has since restored: start from off.
    logging.captureWarnings(False)
    try:
        configure_logging("INFO", "json", stream=stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["logger"] == "py.warnings" and "old API" in line["msg"]
