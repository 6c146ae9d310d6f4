"""The Chroma processor: embeddings upserts and cached semantic search.

A search is cached under ``search:{collection}:{sha256}`` where the digest
covers the query *and the collection's generation* (``search_keys``). Every
upsert increments the generation after Chroma committed the write, so every
search cached before it becomes unreachable at once, on every instance,
without a SCAN.

Why the generation is read from Redis on every search (one GET) and never
kept in memory: the in-process L1 and any remembered generation would let
this instance keep using the old key for a while after another instance's
upsert, and serve results that miss a committed write. Reading it each time
costs one small Redis round trip, next to a vector search it may save.

Ordering: Chroma upsert -> INCR generation -> respond STORED. A search that
read generation ``g`` before the INCR may have queried Chroma before or after
the write and caches its answer under ``g``; from the INCR on, every search
reads ``g + 1`` and cannot reach it. A search that reads ``g + 1`` queries
Chroma after the write committed, so no entry of ``g + 1`` can miss it.

When Redis fails:

- reading the generation: the search goes straight to Chroma, uncached
  (fail open, like every read of the cache core);
- the INCR after a committed write: the write *was* stored, so the answer is
  STORED (with ``generation`` 0: unknown). The INCR is a follow-up
  (``FollowUps``): retried until Redis takes it, with a last try at shutdown.
  Until it lands, this instance serves that collection's searches from
  Chroma, uncached; other instances may serve pre-write cached searches until
  then (while Redis is down they cannot read the cache at all, so the window
  is the time between Redis coming back and the next retry: about a second).

The upsert and its INCR run where the caller's cancellation cannot reach
(``writes.Writes``), so an RPC cancelled after Chroma committed still bumps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Protocol

from mcprouter.server import operations as ops
from mcprouter.server.cache import CacheAside, CachePolicy
from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.chroma.filters import Where, to_where
from mcprouter.server.chroma.search_keys import generation_key, parse_generation, search_cache_key
from mcprouter.server.errors import FieldViolation, InvalidArgument, NotFound
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.router import Handlers, RouteResult
from mcprouter.server.writes import Writes
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import search_pb2 as search
from mcprouter.v1.serve_status_pb2 import ServeStatus

log = logging.getLogger(__name__)


class EmbeddingStore(Protocol):
    """What the processor needs of a store (``ChromaStore`` in production)."""

    async def upsert(self, collection: str, items: Sequence[search.EmbeddingItem]) -> int:
        """Write items; return how many."""

    async def query(
        self, collection: str, embedding: Sequence[float], k: int, where: Where | None
    ) -> search.SearchResult:
        """Nearest neighbours, closest first."""

    async def dimension(self, collection: str) -> int | None:
        """The collection's dimension, ``None`` if unknown."""


class ChromaProcessor:
    """Serves ``upsert_embeddings`` and ``semantic_search``."""

    def __init__(
        self,
        store: EmbeddingStore,
        cache: CacheAside,
        state: GuardedRedis,
        keyspace: KeySpace,
        policy: CachePolicy,
    ) -> None:
        """Borrow the store, the cache core and the state role's Redis door.

        Args:
            store: The Chroma store.
            cache: The shared cache-aside core.
            state: The guarded door to the Redis that keeps the collection
                generations (the state role; the cache's own door when the
                roles share a server).
            keyspace: Where the generation keys live.
            policy: How searches are cached (``DATA_TYPE_SEARCH``).
        """
        self._store = store
        self._cache = cache
        self._state = state
        self._keyspace = keyspace
        self._policy = policy
        self._uncached = dataclasses.replace(policy, enabled=False)
        # Generation bumps not yet taken by Redis, by collection; those
        # collections are searched uncached meanwhile.
        self._bumps = FollowUps()
        self._bumped: dict[str, int] = {}  # the generation each collection's last INCR made
        self._writes = Writes()

    def handlers(self) -> Handlers:
        """The RouteData operations this processor serves."""
        return {
            ops.SEMANTIC_SEARCH: self.semantic_search,
            ops.UPSERT_EMBEDDINGS: self.upsert_embeddings,
        }

    async def semantic_search(self, op: rs.SemanticSearchOperation) -> RouteResult:
        """Nearest neighbours of a vector, through the cache."""
        # The request was checked at the edge (operations.py); only the
        # translation into Chroma's filter document is left, with Chroma's
        # own type rules.
        where = to_where(op.filter if op.HasField("filter") else None, "semantic_search.filter")
        collection = op.collection
        flt = op.filter if op.HasField("filter") else None

        async def load() -> search.SearchResult | None:
            try:
                return await self._store.query(collection, op.embedding, op.k, where)
            except NotFound:
                # Cached briefly as "not found"; the upsert that creates the
                # collection bumps the generation, so it never hides the new data.
                return None

        generation = await self._generation(collection)
        policy = self._policy if generation is not None else self._uncached
        key = search_cache_key(collection, generation or 0, op.embedding, op.k, flt)
        try:
            with _prefixed("semantic_search"):
                served = await self._cache.get_or_load(key, search.SearchResult, load, policy)
        except NotFound as exc:
            raise NotFound(
                f"collection {collection!r} does not exist (it is created by its first upsert)",
                reason="COLLECTION_NOT_FOUND",
                metadata={"collection": collection},
            ) from exc
        return RouteResult(
            status=served.status,
            value=served.value,
            cache_key=served.key if generation is not None else "",
            stored_at=served.stored_at,
        )

    async def upsert_embeddings(self, op: rs.UpsertEmbeddingsOperation) -> RouteResult:
        """Write vectors, then make the collection's cached searches unreachable."""
        collection = op.collection

        async def commit() -> int:
            with _prefixed("upsert_embeddings"):
                expected = await self._store.dimension(collection)
                if expected is not None:
                    _check_dimension(op, expected)
                return await self._store.upsert(collection, op.items)

        async def bump() -> int:
            if await self._bumps.run(collection, lambda: self._incr(collection)):
                return self._bumped.get(collection, 0)
            log.warning(
                "bumping the search generation of %r failed after the write; "
                "searching it uncached and retrying",
                collection,
            )
            return 0

        generation = 0

        async def follow_up() -> None:
            nonlocal generation
            generation = await bump()

        upserted = await self._writes.run(commit, follow_up)
        return RouteResult(
            status=ServeStatus.SERVE_STATUS_STORED,
            value=search.UpsertEmbeddingsResult(
                collection=collection, upserted=upserted, generation=generation
            ),
            stored_at=datetime.now(UTC),
        )

    async def _generation(self, collection: str) -> int | None:
        """The collection's generation; ``None``: search uncached (Redis down, bump pending)."""
        if not self._policy.enabled or collection in self._bumps:
            return None
        key = generation_key(self._keyspace, collection)
        client = self._state.client
        raw = await self._state.call(
            "generation GET", collection, self._policy.data_type, lambda: client.get(key)
        )
        return None if isinstance(raw, Down) else parse_generation(raw)

    async def _incr(self, collection: str) -> None:
        # strict: a write must try even with the breaker open, and fail loudly.
        key = generation_key(self._keyspace, collection)
        self._bumped[collection] = int(
            await self._state.strict(lambda: self._state.client.incr(key))
        )

    async def aclose(self) -> None:
        """Wait for running upserts; give pending generation bumps a last try."""
        await self._writes.aclose()
        await self._bumps.aclose()


@contextlib.contextmanager
def _prefixed(operation: str) -> Iterator[None]:
    """Give the store's operation-relative field paths their request prefix."""
    try:
        yield
    except InvalidArgument as exc:
        if all(v.field.startswith(f"{operation}.") for v in exc.violations):
            raise
        raise InvalidArgument(
            [
                FieldViolation(f"{operation}.{v.field}", v.description, v.reason)
                for v in exc.violations
            ],
            reason=exc.reason,
            metadata=exc.metadata,
        ) from exc


def _check_dimension(op: rs.UpsertEmbeddingsOperation, expected: int) -> None:
    # Items share one dimension (checked at the edge), so the first mismatch is items[0];
    # naming each of up to 1000 identical mistakes would only bloat the error.
    for i, item in enumerate(op.items):
        if len(item.embedding) != expected:
            raise InvalidArgument.single(
                f"upsert_embeddings.items[{i}].embedding",
                f"has dimension {len(item.embedding)}; collection {op.collection!r} "
                f"holds vectors of dimension {expected}",
            )
