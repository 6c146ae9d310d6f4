"""A worker's client of the ClickHouse host (``host``): the subset the store uses.

``ClickHouseStore`` runs every call on a lane worker thread with a
clickhouse-connect client of its own; under ``serve --workers N`` with the
embedded engine that client is a ``HostClient``: the same ``query`` /
``insert`` / ``command`` calls, sent over one Unix-socket connection to the
process that owns chDB. It fails like a network client, so the store's
translation (``failures``) and the lanes' reconnect-after-failure apply
unchanged: a host that is down or restarting is ``OperationalError`` (the
store says ``Unavailable``), an error chDB raised comes back as the
``DatabaseError`` it was, with its code.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from clickhouse_connect.driver import exceptions

from mcprouter.server.clickhouse.host import decode, encode, read_frame

SCHEME = "unix"


@dataclass(frozen=True, slots=True)
class HostResult:
    """What ``query`` returns: the rows, as clickhouse-connect's result has them."""

    result_rows: list[list[Any]]


class HostClient:
    """One connection to the ClickHouse host; used by one thread at a time."""

    def __init__(self, socket_path: Path, *, timeout_s: float) -> None:
        """Connect now (a host that is not there fails here, as an HTTP connect would).

        Raises:
            OperationalError: The host does not answer.
        """
        self._path = socket_path
        self._timeout = timeout_s
        self._sock, self._file = self._connect()

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self._path))
        except OSError as exc:
            sock.close()
            raise exceptions.OperationalError(
                f"the ClickHouse host at {self._path} does not answer: {exc}"
            ) from exc
        return sock, sock.makefile("rb")

    def _dropped(self) -> bool:
        """True when the host closed this idle connection (it restarted, say)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            # Between calls nothing may be readable; an end of stream is.
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._dropped():
            # As an HTTP pool does with a stale keep-alive connection: the
            # request never left, so a new connection may carry it.
            self.close()
            self._sock, self._file = self._connect()
        try:
            self._sock.sendall(encode(request))
            body = read_frame(self._file.read)
        except (OSError, ConnectionError) as exc:
            raise exceptions.OperationalError(
                f"the ClickHouse host connection failed: {exc}"
            ) from exc
        if body is None:
            raise exceptions.OperationalError("the ClickHouse host closed the connection")
        reply: dict[str, Any] = decode(body)
        error = reply.get("error")
        if error is not None:
            kind = getattr(exceptions, str(error.get("type")), exceptions.DatabaseError)
            if not (isinstance(kind, type) and issubclass(kind, exceptions.DatabaseError)):
                kind = exceptions.DatabaseError
            raise kind(error.get("message", ""), code=error.get("code"))
        return reply

    def query(
        self,
        query: str,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> HostResult:
        """Run a read query; its rows."""
        reply = self._call(
            {"op": "query", "sql": query, "parameters": parameters, "settings": settings}
        )
        return HostResult(reply["rows"])

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        column_oriented: bool = False,
    ) -> None:
        """Insert one block."""
        self._call(
            {
                "op": "insert",
                "table": table,
                "data": [list(column) for column in data],
                "column_names": list(column_names),
                "column_oriented": column_oriented,
            }
        )

    def command(self, cmd: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a statement; its scalar answer, if any."""
        return self._call({"op": "command", "sql": cmd, "parameters": parameters}).get("result")

    def close(self) -> None:
        """Close the connection (the host frees this lane's chDB handle)."""
        self._file.close()
        self._sock.close()
