"""DedupRecords on real Redis: each state change of a record, and what it answers.

The event-path tests (test_event_consistency.py) drive these through a whole
processor; these pin the record-level contract that mutation testing showed
they leave open: the codes a claim returns per id, the count a settle returns,
the TTLs written, and that every write touches only the records it should.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mcprouter.server import errors
from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.clickhouse import dedup
from mcprouter.server.clickhouse.dedup import Claim, DedupPolicy, DedupRecords
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats
from tests.integration.test_clickhouse_processor import closed_port

POLICY = DedupPolicy(done_ttl_s=5000, pending_ttl_s=90, insert_timeout_s=30.0)


@pytest.fixture
async def records(redis_client: aioredis.Redis, namespace: str) -> AsyncIterator[DedupRecords]:
    followups = FollowUps()
    guard = GuardedRedis(redis_client, CircuitBreaker(), CacheStats(), timeout=2.0)
    yield DedupRecords(guard, KeySpace(namespace), followups, POLICY)
    await followups.aclose()


def key(namespace: str, event_id: str) -> str:
    return KeySpace(namespace).internal(dedup.DEDUP_FAMILY, event_id)


def test_policy_insert_start_budget_leaves_the_insert_and_the_margin() -> None:
    assert POLICY.insert_start_budget_s == 90 - 30.0 - dedup.MARK_MARGIN_S
    with pytest.raises(ValueError, match="pending TTL"):
        DedupPolicy(pending_ttl_s=35, insert_timeout_s=30.0)  # budget exactly 0
    assert DedupPolicy(pending_ttl_s=36, insert_timeout_s=30.0).insert_start_budget_s == 1.0


async def test_claim_codes_new_done_and_repeated_ids(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(key(namespace, "old"), "1")
    claim = await records.claim(["a", "old", "b", "a"])

    assert claim.is_new == [True, False, True, False]
    assert claim.keys == [key(namespace, "a"), key(namespace, "b")]
    assert len(claim.token) == 8
    for event_id in ("a", "b"):
        assert await redis_client.get(key(namespace, event_id)) == claim.token.encode()
        assert 0 < await redis_client.ttl(key(namespace, event_id)) <= POLICY.pending_ttl_s
    assert await redis_client.get(key(namespace, "old")) == b"1"
    assert await redis_client.ttl(key(namespace, "old")) == -1  # untouched


async def test_claim_with_an_id_in_flight_claims_nothing_and_names_the_pending_ones(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(key(namespace, "busy1"), "other-tok")
    await redis_client.set(key(namespace, "busy2"), "other-tok")

    with pytest.raises(errors.Unavailable) as caught:
        await records.claim(["fresh", "busy1", "busy2"])

    assert caught.value.reason == "EVENTS_IN_FLIGHT"
    assert caught.value.metadata["event_ids"] == "busy1,busy2"
    assert caught.value.metadata["in_flight"] == "2"
    assert "2 of these events" in str(caught.value)
    assert not await redis_client.exists(key(namespace, "fresh"))


async def test_in_flight_error_names_at_most_twenty_ids(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    ids = [f"p{i:02d}" for i in range(dedup.NAMED_IN_ERROR + 5)]
    for event_id in ids:
        await redis_client.set(key(namespace, event_id), "other-tok")

    with pytest.raises(errors.Unavailable) as caught:
        await records.claim(ids)

    assert caught.value.metadata["event_ids"].split(",") == ids[: dedup.NAMED_IN_ERROR]
    assert caught.value.metadata["in_flight"] == str(len(ids))


async def test_mark_done_writes_done_with_the_done_ttl_but_leaves_another_claim(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    first = await records.claim(["x", "y"])
    second = await records.claim(["z"])
    # "y" expired and another call claimed it since; "z" expired and nobody did.
    await redis_client.set(key(namespace, "y"), "someone")
    await redis_client.delete(key(namespace, "z"))

    await records.mark_done([first, second])

    assert await redis_client.get(key(namespace, "x")) == b"1"
    assert await redis_client.ttl(key(namespace, "x")) > POLICY.pending_ttl_s
    assert await redis_client.get(key(namespace, "y")) == b"someone"
    assert await redis_client.get(key(namespace, "z")) == b"1"
    assert await redis_client.ttl(key(namespace, "z")) > POLICY.pending_ttl_s


async def test_mark_done_of_claims_without_new_events_writes_nothing(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    empty = Claim("tok", [False], [], 0.0)
    await records.mark_done([empty])
    await records.release(empty)
    assert [k async for k in redis_client.scan_iter(match=namespace + "*")] == []


async def test_release_deletes_only_the_records_that_still_hold_the_token(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    claim = await records.claim(["r1", "r2"])
    await redis_client.set(key(namespace, "r2"), "someone")

    await records.release(claim)

    assert not await redis_client.exists(key(namespace, "r1"))
    assert await redis_client.get(key(namespace, "r2")) == b"someone"


async def test_settle_stored_counts_the_records_it_changed(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(key(namespace, "pending"), "a-token")
    await redis_client.set(key(namespace, "done"), "1")

    settled = await records.settle_stored(["pending", "done", "absent"])

    assert settled == 2
    for event_id in ("pending", "absent"):
        assert await redis_client.get(key(namespace, event_id)) == b"1"
        assert await redis_client.ttl(key(namespace, event_id)) > POLICY.pending_ttl_s
    assert await records.settle_stored([]) == 0


async def test_settle_stored_covers_every_chunk(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    ids = [f"s{i}" for i in range(dedup.SETTLE_CHUNK + 3)]
    await redis_client.set(key(namespace, ids[0]), "1")

    assert await records.settle_stored(ids) == len(ids) - 1
    assert await redis_client.get(key(namespace, ids[-1])) == b"1"
    assert await redis_client.get(key(namespace, ids[dedup.SETTLE_CHUNK])) == b"1"


async def test_claim_when_redis_fails_raises_cache_unavailable(namespace: str) -> None:
    # A client of a closed port: every call fails as the driver fails.
    client = aioredis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.5)
    followups = FollowUps()
    guard = GuardedRedis(client, CircuitBreaker(), CacheStats(), timeout=0.5)
    records = DedupRecords(guard, KeySpace(namespace), followups, POLICY)
    try:
        with pytest.raises(errors.CacheUnavailable) as caught:
            await records.claim(["a"])
        assert caught.value.metadata == {"action": "dedup"}
        cause = caught.value.__cause__
        assert str(caught.value) == (
            "Redis failed, events cannot be deduplicated and were not stored: "
            f"{type(cause).__name__}: {cause}".rstrip(": ")
        )
    finally:
        await followups.aclose()
        await client.aclose()


async def test_concurrent_mark_done_of_different_claims_each_land(
    records: DedupRecords, redis_client: aioredis.Redis, namespace: str
) -> None:
    """Each mark is a follow-up of its own: one running does not absorb another."""
    first, second = await records.claim(["c1"]), await records.claim(["c2"])
    await asyncio.gather(records.mark_done([first]), records.mark_done([second]))
    assert await redis_client.get(key(namespace, "c1")) == b"1"
    assert await redis_client.get(key(namespace, "c2")) == b"1"
