"""Lanes of ClickHouse workers: each worker is one thread that owns one client.

clickhouse-connect is synchronous, and one client must never run two queries
at once (one HTTP session, clickhouse-connect #295; one chDB connection
handle). So concurrency comes from several clients, never from sharing one:
a ``Lane`` holds a fixed set of workers, each a one-thread executor with a
client of its own that only that thread uses, and hands each call to an idle
worker (callers wait for one, in arrival order). The store keeps inserts and
queries in separate lanes, so a long analytics query never delays the insert
that acknowledges events.

What chDB allows, found by trying it (chdb 4.4 / chdb-core 26.9,
clickhouse-connect 1.12, one process):

- one engine per process, on one data path: connecting to a second path while
  any handle is open fails ("EmbeddedServer already initialized with path");
- any number of connection handles on that one path (``chdb.connect(path)``
  again, from any thread): they share the engine and its data;
- queries on *different* handles run concurrently (an INSERT and a count on a
  second handle finished in ~10 ms while a 4 s ``sleepEachRow`` query ran on
  the first), and ``KILL QUERY`` on one handle cancels a query on another;
- queries on *one* handle run one at a time (the second waits for the first);
- clickhouse-connect >= 1.12 builds its chDB client itself and gives each
  client its own handle and lock; the chdb package's older clickhouse-connect
  backend shared one handle per connection string between clients, which would
  put every lane back on one handle (hence the version floor in pyproject).

So one design serves both: one client per worker thread, built on that
thread, whether the URL is ``chdb://`` (a handle) or ``http(s)://`` (an HTTP
client without a server session).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")
Connect = Callable[[], Client]


class _Worker:
    """One thread and the client only it uses."""

    def __init__(self, name: str, connect: Connect) -> None:
        self.name = name
        self._connect = connect
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.client: Client | None = None

    def call(self, fn: Callable[[Client], T]) -> T:
        """Run on the worker's thread: ``fn`` with this worker's client.

        The client is made on first use and made again after the transport
        failed, so a ClickHouse that is down at start-up, or restarts, is
        picked up by the next call without anyone reconnecting by hand.
        """
        if self.client is None:
            self.client = self._connect()
        try:
            return fn(self.client)
        except (OperationalError, OSError):
            self.close_client()
            raise

    def close_client(self) -> None:
        """Run on the worker's thread: close the client (it is made again when needed)."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class Lane:
    """A fixed set of workers; each call runs on an idle one."""

    def __init__(self, name: str, connect: Connect, *, workers: int) -> None:
        """Build ``workers`` workers that connect with ``connect`` (on their own thread).

        Args:
            name: Thread name prefix, e.g. ``clickhouse-insert``.
            connect: Makes a client; called on the worker's thread.
            workers: How many calls may run at once.
        """
        if workers < 1:
            raise ValueError("a lane needs at least one worker")
        self._workers = [_Worker(f"{name}-{i}", connect) for i in range(workers)]
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)

    @property
    def size(self) -> int:
        """How many calls may run at once."""
        return len(self._workers)

    async def run(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(client)`` on an idle worker's thread, waiting for one if all are busy."""
        worker = await self._idle.get()
        future = asyncio.get_running_loop().run_in_executor(worker.executor, worker.call, fn)

        def done(f: asyncio.Future[T]) -> None:
            # The worker is idle when its thread is, not when its caller left.
            self._idle.put_nowait(worker)
            if not f.cancelled():
                f.exception()  # retrieved: a cancelled caller never awaits it

        future.add_done_callback(done)
        # shield: cancelling the caller cannot stop a call already on the thread.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait for running calls, close every client on its thread, stop the threads."""
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            await loop.run_in_executor(worker.executor, worker.close_client)
            await loop.run_in_executor(None, functools.partial(worker.executor.shutdown, wait=True))
