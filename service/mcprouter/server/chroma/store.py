"""The Chroma store: upserts and cosine nearest-neighbour queries, in our protos.

Knows Chroma and protobuf, nothing about caching or gRPC. One ``ChromaStore``
serves both deployments through a ``Backend`` (``chroma_backends``): the
embedded ``PersistentClient`` (calls run on a bounded thread pool) or a
``chroma run`` server (``AsyncHttpClient``). ``open_chroma`` picks one.

Collections are created on first upsert with cosine distance and no embedding
function: vectors always come from callers, so Chroma never loads a model.

Errors:

- a missing collection on query is ``NotFound``;
- a vector of the wrong dimension, duplicate ids, or a name Chroma rejects is
  ``InvalidArgument``, with field paths relative to the operation
  (``embedding``, ``items[3].embedding``, ``collection``);
- every failure to reach or use Chroma (connection refused, timeout, server
  error, a closed store) is ``Unavailable``; the cache core then serves a
  stale copy if it has one.

Each call is bounded by ``timeout_s``: the HTTP client has no timeout of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from chromadb.errors import (
    ChromaError,
    DuplicateIDError,
    InvalidArgumentError,
    NotFoundError,
)

from mcprouter.server.budget import remaining
from mcprouter.server.chroma.backends import Backend, open_backend
from mcprouter.server.chroma.filters import Where, metadata_from_chroma, metadata_to_chroma
from mcprouter.server.errors import InvalidArgument, NotFound, RouterError, Unavailable
from mcprouter.v1 import search_pb2 as search

log = logging.getLogger(__name__)

# Chroma 1.x collection configuration: cosine distance (SearchHit.distance is
# documented as cosine), no embedding function.
COLLECTION_CONFIGURATION: dict[str, Any] = {"hnsw": {"space": "cosine"}}
# Collection handles kept to skip a lookup round trip per call; a bound, not a tuning knob.
MAX_HANDLES = 1024
_INCLUDE = ["distances", "documents", "metadatas"]


def _is_store_failure(exc: BaseException) -> bool:
    # chromadb raises a bare Exception for HTTP errors it cannot classify.
    return isinstance(exc, ChromaError | httpx.HTTPError | OSError | TimeoutError) or (
        type(exc) is Exception
    )


class ChromaStore:
    """Chroma behind one interface, embedded or server."""

    def __init__(self, backend: Backend, *, timeout_s: float = 10.0) -> None:
        """Take ownership of ``backend`` (``close()`` closes it).

        Args:
            backend: How Chroma is reached.
            timeout_s: Bound on each Chroma call, in seconds.
        """
        self._backend = backend
        self._timeout_s = timeout_s
        self._handles: dict[str, Any] = {}
        self._max_batch: int | None = None
        self.queries = 0
        """Nearest-neighbour queries sent to Chroma (cache misses, in tests and benches)."""

    @property
    def mode(self) -> str:
        """``embedded`` or ``server``."""
        return self._backend.mode

    @asynccontextmanager
    async def _guarded(self, what: str, collection: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(remaining(self._timeout_s)):
                yield
        except (RouterError, NotFoundError, InvalidArgumentError, DuplicateIDError):
            raise  # answers about the request, mapped by the caller
        except Exception as exc:
            if not _is_store_failure(exc):
                raise
            log.warning("chroma %s on %r failed: %s: %s", what, collection, type(exc).__name__, exc)
            raise Unavailable(
                f"the Chroma store failed during {what} on collection {collection!r}: "
                f"{type(exc).__name__}: {exc}",
                metadata={"collection": collection, "operation": what},
            ) from exc

    async def _handle(self, name: str, *, create: bool) -> tuple[Any, bool]:
        """The collection handle, and whether it came from the handle cache."""
        handle = self._handles.get(name)
        if handle is not None:
            return handle, True
        client = await self._backend.client()
        if create:
            handle = await self._backend.run(
                lambda: client.get_or_create_collection(
                    name=name, configuration=COLLECTION_CONFIGURATION, embedding_function=None
                )
            )
        else:
            handle = await self._backend.run(
                lambda: client.get_collection(name=name, embedding_function=None)
            )
        if len(self._handles) >= MAX_HANDLES:
            self._handles.clear()
        self._handles[name] = handle
        return handle, False

    async def _on_collection(
        self, name: str, *, create: bool, call: Callable[[Any], Callable[[], Any]]
    ) -> Any:
        """Run ``call(handle)``; a cached handle of a deleted/recreated collection is renewed."""
        handle, cached = await self._handle(name, create=create)
        try:
            return await self._backend.run(call(handle))
        except NotFoundError:
            self._handles.pop(name, None)
            if not cached:
                raise
        handle, _ = await self._handle(name, create=create)
        return await self._backend.run(call(handle))

    async def _batch_size(self) -> int:
        if self._max_batch is None:
            client = await self._backend.client()
            self._max_batch = int(await self._backend.run(client.get_max_batch_size))
        return self._max_batch

    async def upsert(self, collection: str, items: Sequence[search.EmbeddingItem]) -> int:
        """Insert or replace items (creating the collection); return how many were written.

        Raises:
            InvalidArgument: Wrong dimension, duplicate ids, or a name Chroma rejects.
            Unavailable: Chroma failed; the items may or may not be written
                (upsert is idempotent, so retrying is safe).
        """
        async with self._guarded("upsert", collection):
            batch = await self._batch_size()
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                try:
                    await self._on_collection(
                        collection,
                        create=True,
                        call=functools.partial(_upsert_call, items=chunk),
                    )
                except InvalidArgumentError as exc:
                    raise _invalid(exc, f"items[{start}].embedding", "items") from exc
                except DuplicateIDError as exc:
                    raise InvalidArgument.single("items", f"ids must be unique: {exc}") from exc
        return len(items)

    async def query(
        self, collection: str, embedding: Sequence[float], k: int, where: Where | None
    ) -> search.SearchResult:
        """The ``k`` nearest items to ``embedding`` (cosine), closest first.

        Raises:
            NotFound: The collection does not exist.
            InvalidArgument: ``embedding`` has the wrong dimension.
            Unavailable: Chroma failed.
        """
        vector = list(embedding)
        self.queries += 1
        async with self._guarded("query", collection):
            try:
                raw = await self._on_collection(
                    collection,
                    create=False,
                    call=lambda handle: (
                        lambda: handle.query(
                            query_embeddings=[vector], n_results=k, where=where, include=_INCLUDE
                        )
                    ),
                )
            except NotFoundError as exc:
                raise _missing(collection) from exc
            except InvalidArgumentError as exc:
                raise _invalid(exc, "embedding", "embedding") from exc
        return _search_result(collection, raw)

    async def dimension(self, collection: str) -> int | None:
        """The collection's dimension; ``None`` if it does not exist or holds no vector."""
        async with self._guarded("dimension", collection):
            try:
                got = await self._on_collection(
                    collection,
                    create=False,
                    call=lambda handle: lambda: handle.get(limit=1, include=["embeddings"]),
                )
            except NotFoundError:
                return None
        embeddings = got.get("embeddings")
        if embeddings is None or len(embeddings) == 0:
            return None
        return len(embeddings[0])

    async def ping(self) -> None:
        """Raise unless Chroma answers a heartbeat (the health probe)."""
        async with self._guarded("heartbeat", ""):
            client = await self._backend.client()
            await self._backend.run(client.heartbeat)

    async def close(self) -> None:
        """Close the backend; later calls raise ``Unavailable``."""
        self._handles.clear()
        await self._backend.close()


def _upsert_call(handle: Any, items: Sequence[search.EmbeddingItem]) -> Callable[[], Any]:
    # Built before the call so the (possibly threaded) call only talks to Chroma.
    documents = [item.document if item.HasField("document") else None for item in items]
    metadatas = [metadata_to_chroma(item.metadata) for item in items]
    kwargs: dict[str, Any] = {
        "ids": [item.id for item in items],
        "embeddings": [list(item.embedding) for item in items],
    }
    if any(d is not None for d in documents):
        kwargs["documents"] = documents
    if any(m is not None for m in metadatas):
        kwargs["metadatas"] = metadatas
    return lambda: handle.upsert(**kwargs)


def _search_result(collection: str, raw: Any) -> search.SearchResult:
    result = search.SearchResult(collection=collection)
    ids = raw["ids"][0] if raw.get("ids") else []
    distances = raw["distances"][0] if raw.get("distances") else [0.0] * len(ids)
    documents = raw["documents"][0] if raw.get("documents") else [None] * len(ids)
    metadatas = raw["metadatas"][0] if raw.get("metadatas") else [None] * len(ids)
    for item_id, distance, document, metadata in zip(
        ids, distances, documents, metadatas, strict=True
    ):
        hit = result.hits.add(id=item_id, distance=float(distance))
        if document is not None:
            hit.document = document
        metadata_from_chroma(metadata, hit.metadata)
    return result


def _missing(collection: str) -> NotFound:
    return NotFound(
        f"collection {collection!r} does not exist (it is created by its first upsert)",
        reason="COLLECTION_NOT_FOUND",
        metadata={"collection": collection},
    )


def _invalid(exc: InvalidArgumentError, dimension_field: str, other_field: str) -> InvalidArgument:
    # Chroma reports these as one error class; its message tells them apart.
    message = str(exc)
    if "dimension" in message:
        field = dimension_field
    elif "name" in message:
        field = "collection"
    else:
        field = other_field
    return InvalidArgument.single(field, f"rejected by Chroma: {message}")


async def open_chroma(
    url: str | None, path: Path, *, workers: int = 4, timeout_s: float = 10.0
) -> ChromaStore:
    """Open the Chroma store: a server at ``url``, or embedded at ``path`` when ``None``.

    Args:
        url: ``http(s)://host[:port]`` of a ``chroma run`` server, or ``None``.
        path: Folder of the embedded database (created if missing).
        workers: Threads for the embedded client's blocking calls.
        timeout_s: Bound on each Chroma call, in seconds.

    Returns:
        The store; the caller closes it with ``close()``.
    """
    backend = await open_backend(url, path, workers=workers)
    return ChromaStore(backend, timeout_s=timeout_s)
