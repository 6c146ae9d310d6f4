"""How the Chroma store reaches Chroma: embedded in-process, or a ``chroma run`` server.

Both backends expose the same three things to ``ChromaStore``: the client
(``ClientAPI`` or ``AsyncClientAPI``, whose methods have the same names), a
way to ``run`` one client call, and ``close``.

- ``EmbeddedBackend`` wraps ``chromadb.PersistentClient``. Its calls block
  (Rust + SQLite under the GIL-releasing bindings), so every call runs in a
  bounded ``ThreadPoolExecutor``, never on the event loop thread; the bound
  keeps a burst of searches from spawning threads without limit.
- ``ServerBackend`` wraps ``chromadb.AsyncHttpClient``. The client is created
  lazily: creating it already talks to the server, and the service must start
  (and serve stale cache entries) while Chroma is down.

Neither ever loads an embedding model (callers always send vectors and every
collection is opened with ``embedding_function=None``) and both turn Chroma's
product telemetry off.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import chromadb
from chromadb.config import Settings as ChromaSettings

from mcprouter.server.errors import StoreClosed

DEFAULT_PORT = 8000


class Backend(Protocol):
    """A Chroma client plus the way its calls are made."""

    mode: str
    """``embedded`` or ``server``, for logs and the bench."""

    async def client(self) -> Any:
        """The Chroma client (``ClientAPI`` or ``AsyncClientAPI``)."""

    async def run(self, call: Callable[[], Any]) -> Any:
        """Make one client call (``call`` returns its result or an awaitable)."""

    async def close(self) -> None:
        """Release the client; later calls raise ``StoreClosed``."""


def _settings() -> ChromaSettings:
    # No product telemetry: the service must not phone home.
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


class EmbeddedBackend:
    """``PersistentClient`` at a folder, called from a bounded thread pool."""

    mode = "embedded"

    def __init__(self, client: Any, workers: int) -> None:
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chroma")
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, workers: int = 4) -> EmbeddedBackend:
        """Open (or create) the database at ``path``; opening touches the disk, off-loop."""

        def create() -> Any:
            path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path, settings=_settings())

        return cls(await asyncio.to_thread(create), workers)

    async def client(self) -> Any:
        """The ``PersistentClient``."""
        if self._closed:
            raise StoreClosed("the embedded Chroma store is closed")
        return self._client

    async def run(self, call: Callable[[], Any]) -> Any:
        """Run a blocking client call on the pool."""
        if self._closed:
            raise StoreClosed("the embedded Chroma store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def close(self) -> None:
        """Wait for running calls, then close the client (both off-loop)."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._client.close()

        await asyncio.to_thread(shut)


class ServerBackend:
    """``AsyncHttpClient`` to a Chroma server, connected on first use."""

    mode = "server"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"CHROMA_URL must be http(s)://host[:port], got {url!r}")
        if parts.path not in {"", "/"}:
            raise ValueError(f"CHROMA_URL must not have a path, got {url!r}")
        self._host = parts.hostname
        self._ssl = parts.scheme == "https"
        self._port = parts.port or (443 if self._ssl else DEFAULT_PORT)
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def client(self) -> Any:
        """The connected ``AsyncClientAPI``; connects if not yet connected."""
        if self._closed:
            raise StoreClosed("the Chroma server client is closed")
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await chromadb.AsyncHttpClient(
                        host=self._host, port=self._port, ssl=self._ssl, settings=_settings()
                    )
        return self._client

    async def run(self, call: Callable[[], Any]) -> Any:
        """Await one client call."""
        if self._closed:
            raise StoreClosed("the Chroma server client is closed")
        result = call()
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> None:
        """Close the HTTP connections of the client."""
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        # chromadb 1.5 has no public close for AsyncHttpClient; its HTTP layer
        # (AsyncFastAPI) closes its httpx clients in _cleanup(). Those are kept
        # per event loop at class level, so this closes them for every Chroma
        # client of this loop; the others reopen one on their next call.
        cleanup = getattr(getattr(client, "_server", None), "_cleanup", None)
        if cleanup is not None:
            await cleanup()


async def open_backend(url: str | None, path: Path, *, workers: int = 4) -> Backend:
    """The server backend for ``url``, or the embedded one at ``path`` when it is ``None``."""
    if url is None:
        return await EmbeddedBackend.open(path, workers=workers)
    return ServerBackend(url)
