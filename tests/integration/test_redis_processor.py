"""The Redis processor against a real Redis: GetCached, Invalidate, dedup, figures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mcprouter.server.cache import CacheAside, CircuitBreaker
from mcprouter.server.cache.invalidation import UNLINK_BATCH
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.redis.connection import create_redis
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.stats import CacheStats
from tests import backends


def processor(redis: aioredis.Redis, namespace: str, stats: CacheStats) -> RedisProcessor:
    space = KeySpace(namespace)
    cache = CacheAside(redis, space, stats, CircuitBreaker(), redis_timeout=2.0)
    return RedisProcessor(cache, space)


@pytest.fixture
async def ops(redis_client: aioredis.Redis, namespace: str) -> RedisProcessor:
    return processor(redis_client, namespace, CacheStats())


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = create_redis("redis://127.0.0.1:1/0", pool_size=2, timeout_s=0.1, pool_timeout_s=0.1)
    yield client
    await client.aclose()


async def put(client: aioredis.Redis, namespace: str, **entries: bytes) -> None:
    await client.mset(
        {KeySpace(namespace).redis_key(k.replace("__", ":")): v for k, v in entries.items()}
    )


async def test_get_cached_reads_many_keys_with_ttls(
    ops: RedisProcessor, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(KeySpace(namespace).redis_key("experiment:e1"), b"x", px=60_000)
    await redis_client.set(KeySpace(namespace).redis_key("experiment:e2"), b"y")
    entries = await ops.get_cached(["experiment:e1", "experiment:missing", "experiment:e2"])
    assert [e.key for e in entries] == ["experiment:e1", "experiment:missing", "experiment:e2"]
    assert [e.value for e in entries] == [b"x", None, b"y"]
    assert entries[0].ttl_ms is not None and 0 < entries[0].ttl_ms <= 60_000
    assert entries[1].ttl_ms is None
    assert entries[2].ttl_ms is None  # no expiry


async def test_invalidate_exact_keys_counts_only_existing(
    ops: RedisProcessor, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(KeySpace(namespace).redis_key("user:u1:profile"), b"p")
    assert await ops.invalidate_keys(["user:u1:profile", "user:u2:profile"]) == 1
    assert await redis_client.exists(KeySpace(namespace).redis_key("user:u1:profile")) == 0


async def test_pattern_invalidation_scans_in_batches_within_the_namespace(
    ops: RedisProcessor, redis_client: aioredis.Redis, namespace: str
) -> None:
    count = UNLINK_BATCH * 2 + 17
    pipe = redis_client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(KeySpace(namespace).redis_key(f"metrics:exp-a:v:m:{i:010d}"), b"1")
    pipe.set(KeySpace(namespace).redis_key("metrics:exp-b:v:m:1"), b"keep")
    # The same key outside this namespace must survive.
    pipe.set("other-" + KeySpace(namespace).redis_key("metrics:exp-a:v:m:1"), b"keep", ex=60)
    await pipe.execute()
    try:
        assert await ops.invalidate_pattern("metrics:exp-a:*") == count
        assert await redis_client.exists(KeySpace(namespace).redis_key("metrics:exp-b:v:m:1")) == 1
        assert (
            await redis_client.exists(
                "other-" + KeySpace(namespace).redis_key("metrics:exp-a:v:m:1")
            )
            == 1
        )
    finally:
        await redis_client.unlink("other-" + KeySpace(namespace).redis_key("metrics:exp-a:v:m:1"))


async def test_entity_invalidation_removes_derived_keys_only(
    ops: RedisProcessor, redis_client: aioredis.Redis, namespace: str
) -> None:
    derived = [
        "experiment:e1",
        "assignment:e1:u1",
        "assignment:e1:u2",
        "metrics:e1:control:clicks:2026010100",
        "analytics:e1:20260101",
    ]
    unrelated = ["experiment:e10", "assignment:e10:u1", "analytics:e2:20260101"]
    await redis_client.mset({KeySpace(namespace).redis_key(k): b"1" for k in derived + unrelated})
    assert await ops.invalidate_experiment("e1") == len(derived)
    assert await redis_client.exists(*(KeySpace(namespace).redis_key(k) for k in unrelated)) == len(
        unrelated
    )

    await redis_client.mset(
        {
            KeySpace(namespace).redis_key(k): b"1"
            for k in ["user:u1:profile", "assignment:e7:u1", "assignment:e7:u11"]
        }
    )
    # u1's profile and both of u1's assignments (e7 and, from above, e10).
    assert await ops.invalidate_user("u1") == 3
    assert await redis_client.exists(KeySpace(namespace).redis_key("assignment:e7:u11")) == 1

    await redis_client.mset(
        {
            KeySpace(namespace).redis_key("search:docs:abc"): b"1",
            KeySpace(namespace).redis_key("search:doc:x"): b"1",
        }
    )
    assert await ops.invalidate_collection("docs") == 1


async def test_invalidations_are_counted(
    ops: RedisProcessor, redis_client: aioredis.Redis, namespace: str
) -> None:
    stats = CacheStats()
    counted = processor(redis_client, namespace, stats)
    await redis_client.mset(
        {
            KeySpace(namespace).redis_key("experiment:a"): b"1",
            KeySpace(namespace).redis_key("experiment:b"): b"1",
        }
    )
    await counted.invalidate_pattern("experiment:*")
    assert stats.snapshot().invalidations == 2


async def test_figures_report_memory_and_keys(tmp_path: Path) -> None:
    # A private Valkey: the shared one's key count moves with every other test.
    with backends.restartable_valkey(tmp_path / "valkey") as valkey:
        client = create_redis(valkey.url, pool_size=2, timeout_s=2.0, pool_timeout_s=2.0)
        try:
            ops = processor(client, "figures:", CacheStats())
            empty = await ops.figures()
            assert empty.key_count == 0
            assert empty.used_memory_bytes > 0
            space = KeySpace("figures:")
            await client.mset({space.redis_key(f"experiment:e{i}"): b"x" * 4096 for i in range(7)})
            filled = await ops.figures()
            assert filled.key_count == 7
            assert filled.used_memory_bytes > empty.used_memory_bytes
            assert await ops.invalidate_keys(["experiment:e0", "experiment:e1"]) == 2
            assert (await ops.figures()).key_count == 5
        finally:
            await client.aclose()


async def test_redis_down_is_reported_not_swallowed(dead_redis: aioredis.Redis) -> None:
    stats = CacheStats()
    ops = processor(dead_redis, "", stats)
    with pytest.raises(CacheUnavailable, match="could not invalidate"):
        await ops.invalidate_keys(["experiment:e1"])
    with pytest.raises(CacheUnavailable):
        await ops.get_cached(["experiment:e1"])
    with pytest.raises(CacheUnavailable):
        await ops.figures()
    assert stats.snapshot().redis_errors == 3
