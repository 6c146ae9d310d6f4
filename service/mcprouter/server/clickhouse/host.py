"""The embedded ClickHouse engine shared by the workers of ``serve --workers N``.

chDB hosts one engine, on one data path, per process: a second process
cannot open the same path, and a chDB per worker (a path each) would split
the events, so every analytics answer would count one worker's share. So
with several workers and no ``CLICKHOUSE_URL``, one process owns chDB — the
*ClickHouse host*, started (and restarted) by the supervisor — and the
workers reach it over a Unix socket: ingestion and reads see one table, as
with a ClickHouse server.

The protocol is the smallest that carries what ``ClickHouseStore`` asks of a
clickhouse-connect client (``query``, ``insert``, ``command``): one request,
then one answer, per frame (a 4-byte big-endian length, then JSON; datetimes
tagged as ``{"$dt": iso}``). Each connection is served by a thread of its
own with a chDB handle of its own, so the workers' lanes (one insert lane,
``CLICKHOUSE_QUERY_WORKERS`` query lanes, each a connection) keep the
concurrency they have in-process (see ``lanes``: queries on different handles
run concurrently). The socket lives in a folder only the server's user can
open (0700); nothing else listens. The client side is ``host_client``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socketserver
import struct
import threading
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from mcprouter.server.clickhouse.schema import apply_clickhouse_migrations

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 512 * 1024 * 1024


def encode(value: Any) -> bytes:
    """One frame: the length, then the JSON of ``value`` (datetimes tagged)."""

    def tag(item: Any) -> Any:
        if isinstance(item, datetime | date):
            return {"$dt": item.isoformat(), "date": not isinstance(item, datetime)}
        raise TypeError(f"cannot send {type(item).__name__}")

    body = json.dumps(value, default=tag, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    """The value of a frame's body (datetimes restored)."""

    def untag(item: dict[str, Any]) -> Any:
        if "$dt" in item:
            stamp = datetime.fromisoformat(item["$dt"])
            return stamp.date() if item.get("date") else stamp
        return item

    return json.loads(body, object_hook=untag)


def read_frame(read: Callable[[int], bytes]) -> bytes | None:
    """The next frame's body, or ``None`` at a clean end of stream."""
    head = _read_exactly(read, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes is over the limit")
    body = _read_exactly(read, size)
    if body is None:
        raise ConnectionError("stream ended inside a frame")
    return body


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = read(left)
        if not chunk:
            if left == size:
                return None
            raise ConnectionError("stream ended inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def execute(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request on ``client``; the answer, or the error it raised."""
    op = request.get("op")
    try:
        if op == "query":
            result = client.query(
                request["sql"],
                parameters=request.get("parameters"),
                settings=request.get("settings"),
            )
            return {"rows": [list(row) for row in result.result_rows]}
        if op == "insert":
            client.insert(
                request["table"],
                request["data"],
                column_names=request["column_names"],
                column_oriented=request.get("column_oriented", False),
            )
            return {}
        if op == "command":
            reply = client.command(request["sql"], parameters=request.get("parameters"))
            return {"result": reply if isinstance(reply, int | float | str | list) else None}
        return {"error": {"type": "ProgrammingError", "message": f"unknown op {op!r}"}}
    except DatabaseError as exc:
        return {"error": {"type": type(exc).__name__, "message": str(exc), "code": exc.code}}


class _Handler(socketserver.StreamRequestHandler):
    """One worker lane's connection: a chDB handle of its own, one request at a time."""

    server: HostServer

    def handle(self) -> None:
        client: Client | None = None
        try:
            while True:
                body = read_frame(self.rfile.read)
                if body is None:
                    return
                if client is None:
                    client = self.server.connect()
                self.wfile.write(encode(execute(client, decode(body))))
                self.wfile.flush()
        except (ConnectionError, ValueError) as exc:
            log.debug("ClickHouse host connection ended: %s", exc)
        finally:
            if client is not None:
                client.close()


class HostServer(socketserver.ThreadingUnixStreamServer):
    """The host's listening socket; a thread per connection."""

    daemon_threads = True

    def __init__(self, socket_path: Path, data_path: Path) -> None:
        self.data_path = data_path
        super().__init__(str(socket_path), _Handler)

    def connect(self) -> Client:
        """A chDB handle on the one engine of this process."""
        return clickhouse_connect.get_client(dsn=f"chdb://{self.data_path}")


def run_host(socket_path: Path, data_path: Path, ready: Callable[[], None]) -> None:
    """The host process: migrate, listen on ``socket_path``, serve until SIGTERM.

    Args:
        socket_path: Where to listen (its folder must exist, mode 0700).
        data_path: chDB's data path (created if missing).
        ready: Called once it migrated and listens.
    """
    data_path.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    server = HostServer(socket_path, data_path)
    client = server.connect()
    try:
        applied = apply_clickhouse_migrations(client)
    finally:
        client.close()
    if applied:
        log.info("applied ClickHouse migrations: %s", ", ".join(applied))

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever, which runs on this thread: ask from another.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info(
        "ClickHouse host serving chDB at %s on %s (pid %d)", data_path, socket_path, os.getpid()
    )
    ready()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        socket_path.unlink(missing_ok=True)
        log.info("ClickHouse host stopped")
