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
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis

from mcprouter.server.cache import CacheAside, CachePolicy
from mcprouter.server.cache.guard import Down
from mcprouter.server.chroma.filters import Where, check_collection, to_where
from mcprouter.server.chroma.search_keys import generation_key, parse_generation, search_cache_key
from mcprouter.server.errors import FieldViolation, InvalidArgument, NotFound
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.request_validation import MAX_DIMENSION, MAX_ITEMS_PER_CALL, MAX_K
from mcprouter.server.router import Handler, RouteResult
from mcprouter.server.validation import Violations
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
        redis: aioredis.Redis,
        keyspace: KeySpace,
        policy: CachePolicy,
    ) -> None:
        """Borrow the store, the cache core and the Redis client.

        Args:
            store: The Chroma store.
            cache: The shared cache-aside core.
            redis: The shared client, for the collection generations.
            keyspace: Where the generation keys live.
            policy: How searches are cached (``DATA_TYPE_SEARCH``).
        """
        self._store = store
        self._cache = cache
        self._redis = redis
        self._keyspace = keyspace
        self._policy = policy
        self._uncached = dataclasses.replace(policy, enabled=False)
        # Generation bumps not yet taken by Redis, by collection; those
        # collections are searched uncached meanwhile.
        self._bumps = FollowUps()
        self._bumped: dict[str, int] = {}  # the generation each collection's last INCR made
        self._writes = Writes()

    def handlers(self) -> dict[str, Handler]:
        """The RouteData operations this processor serves."""
        return {
            "semantic_search": self.semantic_search,
            "upsert_embeddings": self.upsert_embeddings,
        }

    async def semantic_search(self, op: rs.SemanticSearchOperation) -> RouteResult:
        """Nearest neighbours of a vector, through the cache."""
        where = _check_search(op)
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
            result_field="search_result",
            value=served.value,
            cache_key=served.key if generation is not None else "",
            stored_at=served.stored_at,
        )

    async def upsert_embeddings(self, op: rs.UpsertEmbeddingsOperation) -> RouteResult:
        """Write vectors, then make the collection's cached searches unreachable."""
        _check_upsert(op)
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
            result_field="upsert_embeddings_result",
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
        raw = await self._cache.guard.call(
            "generation GET", collection, self._policy.data_type, lambda: self._redis.get(key)
        )
        return None if isinstance(raw, Down) else parse_generation(raw)

    async def _incr(self, collection: str) -> None:
        # strict: a write must try even with the breaker open, and fail loudly.
        key = generation_key(self._keyspace, collection)
        self._bumped[collection] = int(
            await self._cache.guard.strict(lambda: self._redis.incr(key))
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
            [FieldViolation(f"{operation}.{v.field}", v.description) for v in exc.violations],
            reason=exc.reason,
            metadata=exc.metadata,
        ) from exc


def _all_finite(values: Sequence[float]) -> bool:
    # One C-level sum instead of a Python loop: any NaN or inf makes the sum
    # non-finite, and finite float32 values (< 3.5e38) cannot overflow a
    # double sum of at most 4096 of them.
    return math.isfinite(sum(values))


def _check_search(op: rs.SemanticSearchOperation) -> Where | None:
    """Chroma's rules plus the bounds the edge also checks (the store must never see less)."""
    v = Violations()
    check_collection(v, "semantic_search.collection", op.collection)
    if not 1 <= len(op.embedding) <= MAX_DIMENSION:
        v.add("semantic_search.embedding", f"must hold 1..{MAX_DIMENSION} elements")
    elif not _all_finite(op.embedding):
        v.add("semantic_search.embedding", "must hold finite numbers only")
    if not 1 <= op.k <= MAX_K:
        v.add("semantic_search.k", f"must be 1..{MAX_K}, got {op.k}")
    v.raise_if_any()
    return to_where(op.filter if op.HasField("filter") else None, "semantic_search.filter")


def _check_upsert(op: rs.UpsertEmbeddingsOperation) -> None:
    v = Violations()
    check_collection(v, "upsert_embeddings.collection", op.collection)
    v.count("upsert_embeddings.items", len(op.items), 1, MAX_ITEMS_PER_CALL)
    dimension = len(op.items[0].embedding) if op.items else 0
    first_index: dict[str, int] = {}
    for i, item in enumerate(op.items[:MAX_ITEMS_PER_CALL]):
        at = f"upsert_embeddings.items[{i}]"
        if (seen := first_index.setdefault(item.id, i)) != i:
            v.add(f"{at}.id", f"duplicates items[{seen}].id {item.id!r}")
        if not 1 <= len(item.embedding) <= MAX_DIMENSION:
            v.add(f"{at}.embedding", f"must hold 1..{MAX_DIMENSION} elements")
        elif len(item.embedding) != dimension:
            v.add(f"{at}.embedding", f"has dimension {len(item.embedding)}, items[0] {dimension}")
        elif not _all_finite(item.embedding):
            v.add(f"{at}.embedding", "must hold finite numbers only")
    v.raise_if_any()


def _check_dimension(op: rs.UpsertEmbeddingsOperation, expected: int) -> None:
    # Items share one dimension (checked above), so the first mismatch is items[0];
    # naming each of up to 1000 identical mistakes would only bloat the error.
    for i, item in enumerate(op.items):
        if len(item.embedding) != expected:
            raise InvalidArgument.single(
                f"upsert_embeddings.items[{i}].embedding",
                f"has dimension {len(item.embedding)}; collection {op.collection!r} "
                f"holds vectors of dimension {expected}",
            )
