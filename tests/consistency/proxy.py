"""A TCP proxy the checker puts between the instances and PostgreSQL.

Three modes, switchable at any time from any thread:

- ``pass_through()``: bytes flow unchanged;
- ``slow(delay_s)``: every chunk waits ``delay_s`` in each direction (order
  within a connection is kept), so each statement costs two delays or more;
- ``unreachable()``: every open connection is cut at once and new ones are
  closed right after accept, which the driver sees as a reset connection,
  like a PostgreSQL that went away;
- ``refuse_new()``: open connections keep flowing, new ones are closed right
  after accept (a driver's cancel request, sent on a connection of its own,
  is lost).

It runs on its own thread and event loop, so the checker's own load cannot
slow the bytes down (or speed them up) behind the checker's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class PostgresProxy:
    """``127.0.0.1:port`` → ``upstream``, with a switchable fault."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._delay_s = 0.0
        self._down = False
        self._refuse_new = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    def start(self) -> PostgresProxy:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def pass_through(self) -> None:
        self._delay_s = 0.0
        self._down = False
        self._refuse_new = False

    def refuse_new(self) -> None:
        self._refuse_new = True

    def slow(self, delay_s: float) -> None:
        self._down = False
        self._delay_s = delay_s

    def unreachable(self) -> None:
        self._down = True
        self._call(self._cut_all())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _cut_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                # abort(): an RST now, not a FIN after buffered data drains.
                writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down or self._refuse_new:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + self._delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
