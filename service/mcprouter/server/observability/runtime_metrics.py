"""Metrics of the running app, read at scrape time: stores, pools, queues, build.

* ``mcprouter_store_duration_seconds{store,operation}`` (histogram) and
  ``mcprouter_store_errors_total``: every timed store call (``timings.py``);
* ``mcprouter_ingest_pending_events`` and ``mcprouter_ingest_pending_limit``:
  events waiting for their ClickHouse insert, and the bound beyond which
  ``track_events`` is refused (``INGEST_MAX_PENDING``);
* ``mcprouter_db_pool_connections{store,state}`` and
  ``mcprouter_db_pool_max_connections{store}``: the PostgreSQL pool;
* ``mcprouter_cache_l1_feed_connected``: 1 while the invalidation feed is
  subscribed (the L1 serves only then); absent when the L1 is off;
* ``mcprouter_build_info{version,python,grpc}``: always 1.

Every series exists from start-up, so rates and alerts have a baseline.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterator

import grpc
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mcprouter.server.app import App


def _version() -> str:
    try:
        return importlib.metadata.version("mcprouter")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


class RuntimeCollector(Collector):
    """Reads the app's own figures on each scrape (on the event loop: no locks)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._build = {"version": _version(), "python": platform.python_version(),
                       "grpc": grpc.__version__}  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family."""
        yield from self._stores()
        app = self._app
        yield GaugeMetricFamily(
            "mcprouter_ingest_pending_events",
            "Events waiting for the ClickHouse insert that carries them.",
            value=app.batcher.pending,
        )
        yield GaugeMetricFamily(
            "mcprouter_ingest_pending_limit",
            "Pending events beyond which track_events is refused (INGEST_MAX_PENDING).",
            value=app.settings.ingest_max_pending,
        )
        pool = app.postgres
        connections = GaugeMetricFamily(
            "mcprouter_db_pool_connections",
            "Open connections of a store's pool, in use or idle.",
            labels=("store", "state"),
        )
        idle = pool.get_idle_size()
        connections.add_metric(("postgres", "in_use"), pool.get_size() - idle)
        connections.add_metric(("postgres", "idle"), idle)
        yield connections
        limit = GaugeMetricFamily(
            "mcprouter_db_pool_max_connections",
            "Most connections a store's pool opens.",
            labels=("store",),
        )
        limit.add_metric(("postgres",), pool.get_max_size())
        yield limit
        connected = app.cache.feed_connected
        if connected is not None:
            yield GaugeMetricFamily(
                "mcprouter_cache_l1_feed_connected",
                "1 while the L1 invalidation feed is subscribed (the L1 serves only then).",
                value=1.0 if connected else 0.0,
            )
        yield InfoMetricFamily("mcprouter_build", "Version of the running server.", self._build)

    def _stores(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "mcprouter_store_duration_seconds",
            "Duration of store calls (PostgreSQL, ClickHouse, Chroma), by store and operation.",
            labels=("store", "operation"),
        )
        errors = CounterMetricFamily(
            "mcprouter_store_errors",
            "Store calls that raised, by store and operation.",
            labels=("store", "operation"),
        )
        for labels, timing in self._app.timings.items():
            latency.add_metric(labels, timing.cumulative(), timing.total)
            errors.add_metric(labels, timing.errors)
        yield latency
        yield errors
