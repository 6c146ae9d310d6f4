"""One ``/metrics`` for N workers: the supervisor merges its workers' registries.

prometheus_client's multiprocess mode shares only Counter/Gauge/Histogram
values through files; most of this server's figures are read at scrape time
from live objects (cache counters, breaker, pools, health), which that mode
cannot carry. So each worker keeps its own registry, served on a private
Unix socket, and the supervisor answers a scrape of ``METRICS_ADDRESS`` by
fetching every worker's page (concurrently, each bounded by
``WORKER_SCRAPE_TIMEOUT_S``) and merging the families, every sample labelled
``worker="i"``. Sum over ``worker`` for the machine (``sum without (worker)
(rate(mcprouter_rpc_requests_total[1m]))``); a worker that does not answer
is left out of that scrape and ``mcprouter_worker_up{worker}`` is 0 for it.
The supervisor adds ``mcprouter_worker_restarts_total{worker}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from mcprouter.server.observability.exporter import MetricsEndpoint
from mcprouter.server.observability.settings import parse_address

log = logging.getLogger(__name__)

WORKER_SCRAPE_TIMEOUT_S = 2.0
MAX_PAGE_BYTES = 16 * 1024 * 1024


class WorkerSlot(Protocol):
    """What the collector reads of a supervised worker."""

    name: str
    restarts: int


async def scrape_unix(path: Path, timeout_s: float = WORKER_SCRAPE_TIMEOUT_S) -> str:
    """``GET /metrics`` over a Unix socket; the page (text format)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nAccept: text/plain\r\n\r\n")
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while chunk := await reader.read(65536):  # the worker closes after its answer
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PAGE_BYTES:
                    raise ConnectionError("worker metrics page over the size limit")
            raw = b"".join(chunks)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"worker metrics answered {head[:40]!r}")
    return body.decode()


def merge(pages: Sequence[tuple[str, str]]) -> list[Metric]:
    """Families of ``(worker, page)`` pairs merged by name, samples labelled ``worker``."""
    merged: dict[str, Metric] = {}
    for worker, page in pages:
        for family in text_string_to_metric_families(page):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    return list(merged.values())


class FleetCollector(Collector):
    """The merged pages of the last ``refresh`` plus the supervisor's own figures."""

    def __init__(self, slots: Sequence[WorkerSlot], sockets: Sequence[Path | None]) -> None:
        self._slots = slots
        self._sockets = sockets
        self._families: list[Metric] = []
        self._up: list[bool] = [False] * len(slots)

    async def refresh(self) -> None:
        """Fetch every worker's page (called before each scrape renders)."""

        async def one(index: int) -> tuple[str, str] | None:
            path = self._sockets[index]
            if path is None:
                return None
            try:
                return str(index), await scrape_unix(path)
            except (OSError, TimeoutError, ConnectionError, UnicodeDecodeError) as exc:
                log.warning("metrics of worker %d not read: %s", index, exc)
                return None

        pages = await asyncio.gather(*(one(i) for i in range(len(self._slots))))
        self._up = [page is not None for page in pages]
        self._families = merge([page for page in pages if page is not None])

    def collect(self) -> Iterator[Metric]:
        """Yield the merged families, then the supervisor's."""
        yield from self._families
        up = GaugeMetricFamily(
            "mcprouter_worker_up",
            "1 when the worker's metrics were read in this scrape (serve --workers N).",
            labels=("worker",),
        )
        restarts = CounterMetricFamily(
            "mcprouter_worker_restarts",
            "Times the supervisor restarted the worker after it died.",
            labels=("worker",),
        )
        for index, slot in enumerate(self._slots):
            up.add_metric((str(index),), 1.0 if self._up[index] else 0.0)
            restarts.add_metric((str(index),), slot.restarts)
        yield up
        yield restarts


@asynccontextmanager
async def open_fleet_metrics(
    address: str, slots: Sequence[WorkerSlot], sockets: Sequence[Path | None]
) -> AsyncIterator[int | None]:
    """Serve the merged ``/metrics`` on ``address`` (empty: off); yield the port."""
    if not address:
        yield None
        return
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(slots, sockets)
    registry.register(collector)
    endpoint = MetricsEndpoint(registry, host, port, before_scrape=collector.refresh)
    bound = await endpoint.start()
    try:
        yield bound
    finally:
        await endpoint.aclose()
