"""Prometheus metrics of one server process, in a registry of its own.

Two sources, no double bookkeeping:

* ``RpcMetrics``: what the telemetry layer records per call: requests
  by method, RouteData operation and status code, latency histograms,
  in-flight calls, events per ``track_events`` request.
* ``ServerCollector``: read at scrape time from what the server already
  counts: cache outcomes per data type and store reads (``CacheStats``), the
  Redis circuit breaker, backend health (``HealthMonitor``) and ClickHouse
  inserts (``ClickHouseStore.inserts``/``inserted_rows``: their ratio is the
  group-commit batch size).

The collector runs on the event loop (the exporter serves scrapes there), so
it reads the plain-integer counters without locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.edge.health import SERVING
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType

# Seconds; a Redis hit answers in ~1 ms, a store miss in a few, analytics
# and vector searches in tens to hundreds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
EVENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
BREAKER_STATES = ("closed", "open", "half_open")
ALL_DATA_TYPES = tuple(v for v in DataType.values() if v != DataType.DATA_TYPE_UNSPECIFIED)


class InsertCounts(Protocol):
    """What the collector reads of the ClickHouse store."""

    inserts: int
    inserted_rows: int


def data_type_label(data_type: DataType.ValueType) -> str:
    """``DATA_TYPE_USER_PROFILE`` → ``user_profile``."""
    return DataType.Name(data_type).removeprefix("DATA_TYPE_").lower()


class RpcMetrics:
    """Per-call metrics; label children are cached so a call costs a few dict lookups."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_service", "grpc_method", "operation")
        self.requests = Counter(
            "mcprouter_rpc_requests",
            "RPCs handled, by method, RouteData operation and gRPC status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "mcprouter_rpc_duration_seconds",
            "Time from the handler's start to its answer, by method and RouteData operation.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mcprouter_rpc_in_flight",
            "RPCs being handled right now.",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        self.event_batch = Histogram(
            "mcprouter_track_events_request_events",
            "Events per track_events request (the client's batch size).",
            buckets=EVENT_BUCKETS,
            registry=registry,
        )
        self._timers: dict[tuple[str, str, str], Histogram] = {}
        self._counters: dict[tuple[str, str, str, str], Counter] = {}
        self._gauges: dict[tuple[str, str], Gauge] = {}

    def declare(self, service: str, method: str, operations: Sequence[str] = ("",)) -> None:
        """Create a method's series (OK count, latency, in flight) before its first call."""
        self._gauges.setdefault((service, method), self.in_flight.labels(service, method))
        for operation in operations:
            key = (service, method, operation)
            self._timers.setdefault(key, self.latency.labels(*key))
            self._counters.setdefault((*key, "OK"), self.requests.labels(*key, "OK"))

    def started(self, service: str, method: str) -> Gauge:
        """Count a call in flight; returns the gauge to ``dec()`` when it ends."""
        gauge = self._gauges.get((service, method))
        if gauge is None:
            gauge = self._gauges[(service, method)] = self.in_flight.labels(service, method)
        gauge.inc()
        return gauge

    def finished(
        self, service: str, method: str, operation: str, code: str, seconds: float
    ) -> None:
        """Record one finished call."""
        key = (service, method, operation)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = self.latency.labels(*key)
        timer.observe(seconds)
        counter = self._counters.get((*key, code))
        if counter is None:
            counter = self._counters[(*key, code)] = self.requests.labels(*key, code)
        counter.inc()


class ServerCollector(Collector):
    """Exposes counters the server keeps anyway, read at scrape time."""

    def __init__(
        self,
        stats: CacheStats,
        breaker: CircuitBreaker,
        *,
        backends: Mapping[str, int] | None = None,
        inserts: InsertCounts | None = None,
    ) -> None:
        """Read from these.

        Args:
            stats: The cache counters (the same ones the Stats RPC reports).
            breaker: The Redis circuit breaker.
            backends: Backend name → health status as last probed (a live mapping).
            inserts: The ClickHouse store's insert counters.
        """
        self._stats = stats
        self._breaker = breaker
        self._backends = backends
        self._inserts = inserts

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by the registry on each scrape)."""
        snap = self._stats.snapshot()
        outcomes = CounterMetricFamily(
            "mcprouter_cache_outcomes",
            "Cache outcomes by data type (hits include local_hits; loads are store reads).",
            labels=("data_type", "outcome"),
        )
        queries = CounterMetricFamily(
            "mcprouter_store_queries",
            "Store reads issued by the cache core (misses, refreshes, cache off), by result.",
            labels=("data_type", "result"),
        )
        # Every data type from start-up, used or not: a rate needs a baseline.
        for data_type in ALL_DATA_TYPES:
            counts = snap.per_type.get(data_type, {})
            label = data_type_label(data_type)
            for outcome in Outcome:
                outcomes.add_metric((label, outcome.value), counts.get(outcome, 0))
            queries.add_metric((label, "ok"), counts.get(Outcome.LOAD, 0))
            queries.add_metric((label, "error"), counts.get(Outcome.LOAD_ERROR, 0))
        yield outcomes
        yield queries
        yield from (
            CounterMetricFamily(name, doc, value=value)
            for name, doc, value in (
                ("mcprouter_cache_operations", "RPCs that touched the data path.",
                 snap.total_operations),
                ("mcprouter_cache_store_queries_avoided", "Reads answered from the cache.",
                 snap.store_queries_avoided),
                ("mcprouter_dedup_hits", "Events rejected as duplicates.", snap.dedup_hits),
                ("mcprouter_cache_invalidations", "Keys removed from the cache.",
                 snap.invalidations),
                ("mcprouter_redis_errors", "Redis calls that failed or timed out.",
                 snap.redis_errors),
            )
        )  # fmt: skip
        yield GaugeMetricFamily(
            "mcprouter_start_time_seconds",
            "When the counters started (process start), Unix seconds.",
            value=snap.started_at.timestamp(),
        )
        state = self._breaker.state
        breaker = GaugeMetricFamily(
            "mcprouter_redis_breaker_state",
            "1 for the Redis circuit breaker's current state (closed/open/half_open).",
            labels=("state",),
        )
        for name in BREAKER_STATES:
            breaker.add_metric((name,), 1.0 if name == state else 0.0)
        yield breaker
        yield GaugeMetricFamily(
            "mcprouter_redis_breaker_consecutive_failures",
            "Redis failures since the last success.",
            value=self._breaker.consecutive_failures,
        )
        if self._backends is not None:
            up = GaugeMetricFamily(
                "mcprouter_backend_up",
                "1 when the backend's last health probe succeeded.",
                labels=("backend",),
            )
            for name, status in sorted(self._backends.items()):
                up.add_metric((name,), 1.0 if status == SERVING else 0.0)
            yield up
        if self._inserts is not None:
            yield CounterMetricFamily(
                "mcprouter_ingest_inserts",
                "ClickHouse event inserts (group commits).",
                value=self._inserts.inserts,
            )
            yield CounterMetricFamily(
                "mcprouter_ingest_inserted_events",
                "Events inserted into ClickHouse; divided by inserts: the batch size.",
                value=self._inserts.inserted_rows,
            )
