"""The Chroma processor through the cache core, on real Redis and real Chroma.

Every test runs twice: against the embedded ``PersistentClient`` and against a
real ``chroma run`` server started for this module. Cache behaviour is shown
by counting Chroma queries (``ChromaStore.queries``) and serve statuses,
never by timing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors
from mcprouter.server.cache import CacheAside, CachePolicy, CircuitBreaker
from mcprouter.server.chroma.processor import ChromaProcessor
from mcprouter.server.chroma.search_keys import generation_key
from mcprouter.server.chroma.store import ChromaStore, open_chroma
from mcprouter.server.keys import KeySpace
from mcprouter.server.operations import validated as validate_route_data
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import search_pb2 as search
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus
from tests import backends
from tests.chroma_server import ChromaServer, chroma_server, free_port
from tests.faults.harness import frozen

CACHED = ServeStatus.SERVE_STATUS_CACHED
FRESH = ServeStatus.SERVE_STATUS_FRESH
STALE = ServeStatus.SERVE_STATUS_STALE
STORED = ServeStatus.SERVE_STATUS_STORED
DIM = 16
MODES = ["embedded", "server"]


class Clock:
    """Wall clock that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Rig:
    processor: ChromaProcessor
    store: ChromaStore
    cache: CacheAside
    clock: Clock
    keyspace: KeySpace
    redis: aioredis.Redis


def policy() -> CachePolicy:
    # xfetch off: these tests count queries exactly.
    return CachePolicy(data_type=DataType.DATA_TYPE_SEARCH, fresh_ttl=600, xfetch_beta=0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    with chroma_server(tmp_path_factory.mktemp("chroma-server")) as running:
        yield running


async def open_store(mode: str, tmp: Path, server: ChromaServer | None) -> ChromaStore:
    if mode == "embedded":
        return await open_chroma(None, tmp / "chroma")
    assert server is not None
    return await open_chroma(server.url, tmp / "unused")


def build_rig(redis: aioredis.Redis, namespace: str, store: ChromaStore) -> Rig:
    clock, keyspace = Clock(), KeySpace(namespace)
    # A generous timeout: tests count queries and must not fail open because a
    # busy machine made one GET slow.
    cache = CacheAside(
        redis, keyspace, CacheStats(), CircuitBreaker(), clock=clock, redis_timeout=2.0
    )
    processor = ChromaProcessor(store, cache, cache.guard, keyspace, policy())
    return Rig(processor, store, cache, clock, keyspace, redis)


@pytest.fixture(params=MODES)
async def rig(
    request: pytest.FixtureRequest,
    redis_client: aioredis.Redis,
    namespace: str,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    server = request.getfixturevalue("server") if request.param == "server" else None
    store = await open_store(request.param, tmp_path, server)
    rig = build_rig(redis_client, namespace, store)
    yield rig
    await rig.processor.aclose()
    await rig.cache.aclose()
    await store.close()


def collection_name() -> str:
    # Unique per test: the module's server is shared.
    return f"col-{uuid.uuid4().hex[:12]}"


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def items(
    vectors: np.ndarray, *, prefix: str = "item", start: int = 0
) -> list[search.EmbeddingItem]:
    made = []
    for n, vector in enumerate(vectors, start=start):
        item = search.EmbeddingItem(id=f"{prefix}-{n}", embedding=vector.tolist())
        item.document = f"document {n}"
        item.metadata["parity"].string_value = "even" if n % 2 == 0 else "odd"
        item.metadata["n"].int_value = n
        made.append(item)
    return made


async def upsert(rig: Rig, collection: str, batch: list[search.EmbeddingItem]) -> int:
    result = await rig.processor.upsert_embeddings(
        rs.UpsertEmbeddingsOperation(collection=collection, items=batch)
    )
    assert result.status == STORED
    assert isinstance(result.value, search.UpsertEmbeddingsResult)
    assert result.value.upserted == len(batch)
    return int(result.value.generation)


def query(
    collection: str,
    vector: np.ndarray | list[float],
    k: int = 10,
    filter_: search.MetadataFilter | None = None,
) -> rs.SemanticSearchOperation:
    op = rs.SemanticSearchOperation(collection=collection, embedding=list(map(float, vector)), k=k)
    if filter_ is not None:
        op.filter.CopyFrom(filter_)
    return op


async def run_search(rig: Rig, op: rs.SemanticSearchOperation) -> tuple[int, search.SearchResult]:
    result = await rig.processor.semantic_search(op)
    assert isinstance(result.value, search.SearchResult)
    return result.status, result.value


def brute_force(
    vectors: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[list[int], np.ndarray]:
    qn = q / np.linalg.norm(q)
    distances = 1.0 - (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ qn
    order = np.argsort(distances, kind="stable")
    if allowed is not None:
        order = np.array([i for i in order if allowed[i]])
    top = order[:k]
    return [int(i) for i in top], distances[top]


def even_filter() -> search.MetadataFilter:
    return search.MetadataFilter(
        conditions=[
            search.MetadataCondition(
                key="parity",
                operator=search.FILTER_OPERATOR_EQ,
                value=search.MetadataValue(string_value="even"),
            )
        ]
    )


# --- results -------------------------------------------------------------------


async def test_nearest_neighbours_equal_brute_force_cosine(rig: Rig) -> None:
    rng = np.random.default_rng(5)
    vectors = unit_vectors(rng, 400)
    collection = collection_name()
    await upsert(rig, collection, items(vectors))
    for q in unit_vectors(rng, 5):
        status, result = await run_search(rig, query(collection, q, k=10))
        assert status == FRESH
        expected, distances = brute_force(vectors, q, 10)
        assert [h.id for h in result.hits] == [f"item-{i}" for i in expected]
        np.testing.assert_allclose([h.distance for h in result.hits], distances, atol=1e-4)
        first = result.hits[0]
        assert first.document == f"document {expected[0]}"
        assert first.metadata["n"].int_value == expected[0]

    q = unit_vectors(rng, 1)[0]
    status, result = await run_search(rig, query(collection, q, k=7, filter_=even_filter()))
    expected, _ = brute_force(vectors, q, 7, allowed=np.arange(len(vectors)) % 2 == 0)
    assert [h.id for h in result.hits] == [f"item-{i}" for i in expected]
    assert all(h.metadata["parity"].string_value == "even" for h in result.hits)


async def test_k_larger_than_the_collection_returns_everything(rig: Rig) -> None:
    rng = np.random.default_rng(6)
    vectors = unit_vectors(rng, 3)
    collection = collection_name()
    await upsert(rig, collection, items(vectors))
    _, result = await run_search(rig, query(collection, vectors[0], k=100))
    assert len(result.hits) == 3
    assert result.hits[0].id == "item-0"


# --- caching and generations --------------------------------------------------------


async def test_repeat_search_is_cached(rig: Rig) -> None:
    rng = np.random.default_rng(7)
    collection = collection_name()
    await upsert(rig, collection, items(unit_vectors(rng, 50)))
    op = query(collection, unit_vectors(rng, 1)[0], k=5, filter_=even_filter())
    first_status, first = await run_search(rig, op)
    second_status, second = await run_search(rig, op)
    assert (first_status, second_status) == (FRESH, CACHED)
    assert first == second
    assert rig.store.queries == 1
    # A different k is a different search.
    status, _ = await run_search(rig, query(collection, op.embedding, k=6, filter_=even_filter()))
    assert status == FRESH
    assert rig.store.queries == 2


async def test_search_after_upsert_sees_the_new_vector(rig: Rig) -> None:
    rng = np.random.default_rng(8)
    collection = collection_name()
    assert await upsert(rig, collection, items(unit_vectors(rng, 30))) == 1
    q = unit_vectors(rng, 1)[0]
    op = query(collection, q, k=3)
    await run_search(rig, op)
    status, before = await run_search(rig, op)
    assert status == CACHED
    assert "new" not in [h.id for h in before.hits]

    generation = await upsert(rig, collection, [search.EmbeddingItem(id="new", embedding=q)])
    assert generation == 2
    status, after = await run_search(rig, op)
    assert status == FRESH
    assert after.hits[0].id == "new"
    assert after.hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert (await run_search(rig, op))[0] == CACHED


async def test_invalidate_rpc_bumps_the_generation(rig: Rig) -> None:
    rng = np.random.default_rng(9)
    collection = collection_name()
    await upsert(rig, collection, items(unit_vectors(rng, 10)))
    op = query(collection, unit_vectors(rng, 1)[0], k=3)
    await run_search(rig, op)
    ops = RedisProcessor(rig.cache, rig.keyspace)
    assert await ops.invalidate_collection(collection) == 1  # the entry's memory is freed too
    assert await rig.redis.get(generation_key(rig.keyspace, collection)) == b"2"
    assert (await run_search(rig, op))[0] == FRESH


async def test_missing_collection_is_not_found_until_created(rig: Rig) -> None:
    collection = collection_name()
    op = query(collection, [1.0] * DIM, k=3)
    for _ in range(2):
        with pytest.raises(errors.NotFound) as exc:
            await rig.processor.semantic_search(op)
        assert exc.value.metadata["collection"] == collection
    assert rig.store.queries == 1  # "not found" is cached briefly
    # The upsert that creates it bumps the generation: the negative entry is unreachable.
    await upsert(rig, collection, [search.EmbeddingItem(id="a", embedding=[1.0] * DIM)])
    _, result = await run_search(rig, op)
    assert [h.id for h in result.hits] == ["a"]


# --- invalid input -----------------------------------------------------------------


def fields(exc: pytest.ExceptionInfo[errors.InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


async def test_dimension_mismatch_is_invalid_argument(rig: Rig) -> None:
    collection = collection_name()
    await upsert(rig, collection, items(unit_vectors(np.random.default_rng(1), 5)))
    bad = [search.EmbeddingItem(id=f"b{n}", embedding=[0.5] * (DIM + 1)) for n in range(3)]
    with pytest.raises(errors.InvalidArgument) as exc:
        await rig.processor.upsert_embeddings(
            rs.UpsertEmbeddingsOperation(collection=collection, items=bad)
        )
    assert fields(exc) == ["upsert_embeddings.items[0].embedding"]
    assert f"dimension {DIM}" in exc.value.violations[0].description
    # Mixed dimensions within one request name the odd item.
    mixed = [
        search.EmbeddingItem(id="m0", embedding=[0.5] * DIM),
        search.EmbeddingItem(id="m1", embedding=[0.5] * (DIM - 1)),
    ]
    with pytest.raises(errors.InvalidArgument) as exc:
        await rig.processor.upsert_embeddings(
            rs.UpsertEmbeddingsOperation(collection=collection, items=mixed)
        )
    assert fields(exc) == ["upsert_embeddings.items[1].embedding"]

    with pytest.raises(errors.InvalidArgument) as exc:
        await rig.processor.semantic_search(query(collection, [0.5] * (DIM + 2), k=3))
    assert fields(exc) == ["semantic_search.embedding"]
    # The store also maps Chroma's own rejection (the path a race would take).
    with pytest.raises(errors.InvalidArgument) as exc:
        await rig.store.upsert(collection, bad)
    assert fields(exc) == ["items[0].embedding"]


async def test_duplicate_ids_are_invalid_argument(rig: Rig) -> None:
    # Checked once, at the edge: the processor trusts a validated request.
    batch = [search.EmbeddingItem(id="same", embedding=[1.0] * DIM) for _ in range(2)]
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(
            rs.RouteDataRequest(
                upsert_embeddings=rs.UpsertEmbeddingsOperation(
                    collection=collection_name(), items=batch
                )
            )
        )
    assert fields(exc) == ["upsert_embeddings.items[1].id"]


@pytest.mark.parametrize("name", ["ab", "-abc", "abc_", "a..b", "192.168.0.1", "has space", ""])
async def test_bad_collection_names_are_invalid_argument(rig: Rig, name: str) -> None:
    # Chroma's collection name rules are enforced at the edge, before any store call.
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(rs.RouteDataRequest(semantic_search=query(name, [1.0] * DIM, k=1)))
    assert fields(exc) == ["semantic_search.collection"]
    upsert = rs.UpsertEmbeddingsOperation(
        collection=name, items=[search.EmbeddingItem(id="a", embedding=[1.0] * DIM)]
    )
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(rs.RouteDataRequest(upsert_embeddings=upsert))
    assert fields(exc) == ["upsert_embeddings.collection"]


@pytest.mark.parametrize("k", [0, 101, 10_000])
async def test_k_out_of_range_is_invalid_argument(rig: Rig, k: int) -> None:
    op = query(collection_name(), [1.0] * DIM, k=k)
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(rs.RouteDataRequest(semantic_search=op))
    assert fields(exc) == ["semantic_search.k"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_vectors_are_invalid_argument(rig: Rig, bad: float) -> None:
    vector = [0.5] * DIM
    vector[3] = bad
    op = query(collection_name(), vector, k=3)
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(rs.RouteDataRequest(semantic_search=op))
    assert fields(exc) == ["semantic_search.embedding[3]"]
    upsert_op = rs.UpsertEmbeddingsOperation(
        collection=collection_name(), items=[search.EmbeddingItem(id="x", embedding=vector)]
    )
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_route_data(rs.RouteDataRequest(upsert_embeddings=upsert_op))
    assert fields(exc) == ["upsert_embeddings.items[0].embedding[3]"]


def condition(
    op: search.FilterOperator.ValueType, *values: search.MetadataValue
) -> search.MetadataCondition:
    cond = search.MetadataCondition(key="n", operator=op)
    if op in (search.FILTER_OPERATOR_IN, search.FILTER_OPERATOR_NOT_IN):
        cond.values.extend(values)
    elif values:
        cond.value.CopyFrom(values[0])
    return cond


@pytest.mark.parametrize(
    ("cond", "field"),
    [
        (condition(search.FILTER_OPERATOR_GT, search.MetadataValue(string_value="a")), "value"),
        (condition(search.FILTER_OPERATOR_LTE, search.MetadataValue(bool_value=True)), "value"),
        (condition(search.FILTER_OPERATOR_EQ), "value"),
        (condition(search.FILTER_OPERATOR_UNSPECIFIED), "operator"),
        (
            condition(
                search.FILTER_OPERATOR_IN,
                search.MetadataValue(int_value=1),
                search.MetadataValue(string_value="1"),
            ),
            "values",
        ),
    ],
)
async def test_bad_filters_are_invalid_argument(
    rig: Rig, cond: search.MetadataCondition, field: str
) -> None:
    collection = collection_name()
    await upsert(rig, collection, items(unit_vectors(np.random.default_rng(2), 5)))
    op = query(collection, [1.0] * DIM, k=3, filter_=search.MetadataFilter(conditions=[cond]))
    with pytest.raises(errors.InvalidArgument) as exc:
        await rig.processor.semantic_search(op)
    assert fields(exc) == [f"semantic_search.filter.conditions[0].{field}"]
    assert rig.store.queries == 0


async def test_numeric_filters_run_in_chroma(rig: Rig) -> None:
    rng = np.random.default_rng(3)
    collection = collection_name()
    vectors = unit_vectors(rng, 40)
    await upsert(rig, collection, items(vectors))
    flt = search.MetadataFilter(
        conditions=[
            condition(search.FILTER_OPERATOR_GTE, search.MetadataValue(int_value=10)),
            condition(search.FILTER_OPERATOR_LT, search.MetadataValue(double_value=20.0)),
            condition(
                search.FILTER_OPERATOR_NOT_IN,
                search.MetadataValue(int_value=12),
                search.MetadataValue(int_value=13),
            ),
        ]
    )
    _, result = await run_search(rig, query(collection, vectors[0], k=100, filter_=flt))
    assert sorted(h.metadata["n"].int_value for h in result.hits) == [
        10,
        11,
        *range(14, 20),
    ]


# --- Chroma down -------------------------------------------------------------------


async def cache_one_search(rig: Rig) -> tuple[str, rs.SemanticSearchOperation, search.SearchResult]:
    """A collection with 20 vectors and one search of it, cached."""
    collection = collection_name()
    rng = np.random.default_rng(4)
    await upsert(rig, collection, items(unit_vectors(rng, 20)))
    cached_op = query(collection, unit_vectors(rng, 1)[0], k=3)
    status, answer = await run_search(rig, cached_op)
    assert status == FRESH
    await rig.cache.settle()
    return collection, cached_op, answer


async def assert_down(
    rig: Rig,
    collection: str,
    cached_op: rs.SemanticSearchOperation,
    answer: search.SearchResult,
    *,
    closed: bool = False,
) -> None:
    """While Chroma is down: cached answers served, the rest UNAVAILABLE naming Chroma.

    A failed call names its collection and operation; a closed store refuses
    before any call (``StoreClosed``), so it names neither.
    """
    assert (await run_search(rig, cached_op))[0] == CACHED  # still fresh: Chroma not asked
    rig.clock.offset = 700  # past the 600 s freshness, within the stale window
    status, stale = await run_search(rig, cached_op)
    assert status == STALE
    assert stale == answer
    other = query(collection, [1.0] + [0.0] * (DIM - 1), k=3)
    with pytest.raises(errors.Unavailable) as caught:
        await rig.processor.semantic_search(other)
    cause = caught.value.__cause__
    assert isinstance(cause, errors.Unavailable)
    assert "Chroma" in cause.message
    if closed:
        assert isinstance(cause, errors.StoreClosed)
    else:
        assert cause.metadata == {"collection": collection, "operation": "query"}
    with pytest.raises(errors.Unavailable) as caught:
        await rig.processor.upsert_embeddings(
            rs.UpsertEmbeddingsOperation(
                collection=collection, items=[search.EmbeddingItem(id="z", embedding=[1] * DIM)]
            )
        )
    assert "Chroma" in caught.value.message
    if closed:
        assert isinstance(caught.value, errors.StoreClosed)
    else:
        assert caught.value.metadata == {"collection": collection, "operation": "dimension"}


async def assert_recovered(
    rig: Rig, collection: str, cached_op: rs.SemanticSearchOperation
) -> None:
    """Chroma is back: searches load again, and a write is searchable."""
    new = [1.0, 1.0] + [0.0] * (DIM - 2)
    await upsert(rig, collection, [search.EmbeddingItem(id="after", embedding=new)])
    status, result = await run_search(rig, query(collection, new, k=1))
    assert (status, [h.id for h in result.hits]) == (FRESH, ["after"])
    assert (await run_search(rig, cached_op))[0] == FRESH  # the write made the entry unreachable
    assert (await run_search(rig, cached_op))[0] == CACHED


async def test_chroma_server_stopped_serves_stale_or_unavailable_then_recovers(
    redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    # Its own server: this test stops it and starts it again on the same port and data.
    with chroma_server(tmp_path / "server") as own_server:
        store = await open_chroma(own_server.url, tmp_path / "unused")
        rig = build_rig(redis_client, namespace, store)
        try:
            collection, cached_op, answer = await cache_one_search(rig)
            own_server.stop()
            await assert_down(rig, collection, cached_op, answer)
            own_server.restart()
            await assert_recovered(rig, collection, cached_op)
        finally:
            await rig.processor.aclose()
            await rig.cache.aclose()
            await store.close()


async def test_chroma_server_paused_serves_stale_or_unavailable_then_recovers(
    redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    # SIGSTOP: connections are accepted by the kernel and never answered; only
    # the store's own bound on each call (timeout_s) ends them.
    with chroma_server(tmp_path / "server") as own_server:
        store = await open_chroma(own_server.url, tmp_path / "unused", timeout_s=1.0)
        rig = build_rig(redis_client, namespace, store)
        try:
            collection, cached_op, answer = await cache_one_search(rig)
            with frozen(own_server.pid):
                await assert_down(rig, collection, cached_op, answer)
            await assert_recovered(rig, collection, cached_op)
        finally:
            await rig.processor.aclose()
            await rig.cache.aclose()
            await store.close()


async def test_closed_embedded_store_serves_stale_or_unavailable(
    redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    # The embedded database has no server to lose; what it can become is
    # closed (at shutdown), and a closed store answers like one that is down.
    store = await open_chroma(None, tmp_path / "chroma")
    rig = build_rig(redis_client, namespace, store)
    try:
        collection, cached_op, answer = await cache_one_search(rig)
        await store.close()
        await assert_down(rig, collection, cached_op, answer, closed=True)
    finally:
        await rig.processor.aclose()
        await rig.cache.aclose()
        await store.close()


async def test_server_started_down_connects_later(
    redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    # The service must start while Chroma is down: the client connects on first use.
    port = free_port()
    store = await open_chroma(f"http://127.0.0.1:{port}", tmp_path / "unused", timeout_s=5.0)
    rig = build_rig(redis_client, namespace, store)
    collection = collection_name()
    item = search.EmbeddingItem(id="a", embedding=[1.0] * DIM)
    try:
        with pytest.raises(errors.Unavailable):
            await store.ping()
        with pytest.raises(errors.Unavailable):
            await rig.processor.upsert_embeddings(
                rs.UpsertEmbeddingsOperation(collection=collection, items=[item])
            )
        # Chroma comes up at the address the store was given: the same store,
        # never reopened, now serves writes and searches.
        with chroma_server(tmp_path / "late-server", port=port):
            await store.ping()
            await upsert(rig, collection, [item])
            op = query(collection, [1.0] * DIM, k=1)
            status, found = await run_search(rig, op)
            assert status == FRESH
            assert [hit.id for hit in found.hits] == ["a"]
            assert (await run_search(rig, op))[0] == CACHED
    finally:
        await rig.processor.aclose()
        await rig.cache.aclose()
        await store.close()


# --- Redis failing around a write ---------------------------------------------------


async def test_failed_generation_bump_searches_uncached_until_retried(
    tmp_path: Path,
) -> None:
    with backends.restartable_valkey(tmp_path / "valkey") as valkey:
        redis = create_redis(valkey.url, pool_size=8, timeout_s=0.5, pool_timeout_s=0.5)
        store = await open_chroma(None, tmp_path / "chroma")
        rig = build_rig(redis, "", store)
        try:
            collection = collection_name()
            await upsert(rig, collection, [search.EmbeddingItem(id="a", embedding=[1.0] * DIM)])
            op = query(collection, [1.0] * DIM, k=2)
            await run_search(rig, op)
            assert (await run_search(rig, op))[0] == CACHED

            valkey.stop()
            item_b = search.EmbeddingItem(id="b", embedding=[1.0] * DIM)
            result = await rig.processor.upsert_embeddings(
                rs.UpsertEmbeddingsOperation(collection=collection, items=[item_b])
            )
            # Committed in Chroma, so STORED; the generation is unknown (0).
            assert result.status == STORED
            assert isinstance(result.value, search.UpsertEmbeddingsResult)
            assert result.value.generation == 0
            status, hits = await run_search(rig, op)
            assert status == FRESH
            assert sorted(h.id for h in hits.hits) == ["a", "b"]

            valkey.restart()
            # Until the retry lands, this instance searches uncached; then it
            # caches again, under the bumped generation.
            statuses = []
            for _ in range(100):
                statuses.append((await run_search(rig, op))[0])
                if statuses[-1] == CACHED:
                    break
                await asyncio.sleep(0.1)
            assert statuses[-1] == CACHED
            assert set(statuses[:-1]) == {FRESH}
            assert await redis.get(generation_key(rig.keyspace, collection)) == b"1"
        finally:
            await rig.processor.aclose()
            await rig.cache.aclose()
            await store.close()
            await redis.aclose()
