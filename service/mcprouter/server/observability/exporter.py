"""A minimal asyncio HTTP endpoint serving ``GET /metrics`` from a registry.

Scrapes are served on the server's event loop, so collectors read the
server's counters from the thread that writes them (no locks, no torn
snapshots) and no extra thread or web framework is needed. One request per
connection; requests are bounded in size and time so a stuck or hostile
client cannot hold the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0
MAX_HEADER_LINES = 100
MAX_LINE_BYTES = 8192


class MetricsEndpoint:
    """Serves one registry over plain HTTP on ``host:port`` (or a Unix socket)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str | None,
        port: int,
        *,
        path: Path | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve ``registry``.

        Args:
            registry: What a scrape renders.
            host: Interface to listen on (``None``: every one).
            port: TCP port (0: any free one).
            path: Listen on this Unix socket instead of TCP (a worker of
                ``serve --workers N`` serving its supervisor).
            before_scrape: Awaited before each scrape renders (the supervisor
                gathers its workers' metrics there).
        """
        self._registry = registry
        self._host = host
        self._port = port
        self._path = path
        self._before_scrape = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0; 0 on a Unix socket)."""
        if self._path is not None:
            self._server = await asyncio.start_unix_server(
                self._handle, str(self._path), limit=MAX_LINE_BYTES
            )
            log.debug("metrics on unix:%s", self._path)
            return 0
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_LINE_BYTES
        )
        port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self._host or "0.0.0.0", port)
        return port

    async def aclose(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            # A connection in progress ends within READ_TIMEOUT_S by itself.
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request_line = await reader.readline()
                accept = ""
                for _ in range(MAX_HEADER_LINES):
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "accept":
                        accept = value.strip()
                if self._before_scrape is not None:
                    await self._before_scrape()
            status, content_type, body = self._respond(request_line, accept)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1"))
            if not request_line.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a slow, oversized or vanished client: just close
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, request_line: bytes, accept: str) -> tuple[str, str, bytes]:
        parts = request_line.split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/metrics/"):
            return "404 Not Found", "text/plain", b"try /metrics\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        encoder, content_type = choose_encoder(accept)
        return "200 OK", content_type, encoder(self._registry)
