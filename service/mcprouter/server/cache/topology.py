"""What differs between one Redis server and a Redis Cluster, in one place.

Every key carries a hash tag (``keys.py``), so the keys one script touches
share a slot on a cluster too; what still differs is handled here:

- **SCAN** walks one server's keyspace; on a cluster every primary is walked.
- **Pub/sub**: the invalidation feed uses sharded pub/sub on a cluster
  (``SPUBLISH``/``SSUBSCRIBE``: the message goes to the one shard that owns
  the channel, not to every node), plain ``PUBLISH``/``SUBSCRIBE`` otherwise.
- **Scripts over many keys** (a request's dedup records, its counters) run
  once per slot: ``by_slot`` groups keys by the slot their tag puts them in.
- **Server figures** (memory, key count) are summed over the primaries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""A client of one server or of a cluster; both speak the commands we use."""


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def scan_targets(client: RedisClient) -> list[Any]:
    """What one SCAN walk covers: ``[None]`` (the server), or every primary node."""
    if isinstance(client, RedisCluster):
        return list(client.get_primaries())
    return [None]


async def scan_page(
    client: RedisClient, target: Any, cursor: int, match: str, count: int
) -> tuple[int, list[bytes]]:
    """One SCAN call on ``target`` (from ``scan_targets``): the next cursor and the keys."""
    reply: Any
    if isinstance(client, RedisCluster):
        reply = await client.scan(cursor, match=match, count=count, target_nodes=target)
        cursors, found = reply
        return int(next(iter(cursors.values()), 0)), list(found)
    reply = await client.scan(cursor, match=match, count=count)
    next_cursor, found = reply
    return int(next_cursor), list(found)


async def publish(client: RedisClient, channel: str, message: bytes) -> int:
    """Publish on the channel (sharded on a cluster)."""
    if isinstance(client, RedisCluster):
        return int(await client.spublish(channel, message))
    return int(await client.publish(channel, message))


class Subscription:
    """One channel's subscription, plain or sharded, with its messages normalised.

    ``next`` answers ``{"type": "subscribe" | "message" | "pong", "data": ...}``
    (sharded ``ssubscribe``/``smessage`` are reported as the plain kinds) or
    ``None`` when nothing arrived within the timeout.
    """

    def __init__(self, client: RedisClient, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._sharded = isinstance(client, RedisCluster)
        self._pubsub: Any = client.pubsub()

    async def open(self) -> None:
        """Subscribe; the confirmation arrives as the first ``subscribe`` message."""
        if self._sharded:
            await self._pubsub.ssubscribe(self._channel)
        else:
            await self._pubsub.subscribe(self._channel)

    async def next(self, wait_s: float) -> dict[str, Any] | None:
        """The next message, or ``None`` after ``wait_s`` seconds of silence."""
        if self._sharded:
            message = await self._pubsub.get_sharded_message(timeout=wait_s)
        else:
            message = await self._pubsub.get_message(timeout=wait_s)
        if message is None:
            return None
        kind = message.get("type")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        kind = {"ssubscribe": "subscribe", "smessage": "message"}.get(kind, kind)
        return {"type": kind, "data": message.get("data")}

    async def ping(self) -> None:
        """PING on the subscription's own connection(s); the PONG comes as a message."""
        if self._sharded:
            for node_pubsub in list(self._pubsub.node_pubsub_mapping.values()):
                await node_pubsub.ping()
        else:
            await self._pubsub.ping()

    async def aclose(self) -> None:
        """Unsubscribe and release the connection(s)."""
        await self._pubsub.aclose()


def slot_groups(client: RedisClient, keys: Sequence[str]) -> list[list[int]]:
    """Indices of ``keys`` grouped so each group can go to one script call.

    One group on a single server (one round trip); one group per slot on a
    cluster, in the order of each slot's first key.
    """
    if not isinstance(client, RedisCluster):
        return [list(range(len(keys)))] if keys else []
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(index)
    return list(groups.values())


async def run_per_slot(
    client: RedisClient, script: Any, calls: Sequence[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run a registered script once per ``(keys, args)`` call; the keys of a call share a slot.

    One call: one EVALSHA. Several on a cluster: one pipeline (a round trip per
    node, few connections), loading the script first where a node lacks it.
    """
    if len(calls) == 1 or not isinstance(client, RedisCluster):
        return [await script(keys=keys, args=args) for keys, args in calls]
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for index in todo:
                keys, args = calls[index]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        missing = []
        for index, result in zip(todo, results, strict=True):
            if isinstance(result, NoScriptError) and attempt == 0:
                missing.append(index)
            elif isinstance(result, Exception):
                raise result
            else:
                replies[index] = result
        if not missing:
            break
        await client.script_load(script.script)
        todo = missing
    return replies


async def primaries_figures(client: RedisClient) -> tuple[int, int]:
    """``used_memory`` and the key count, summed over the primaries of a cluster."""
    if isinstance(client, RedisCluster):
        memory: dict[str, Any] = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        sizes: Any = await client.dbsize(target_nodes=RedisCluster.PRIMARIES)
        used = sum(int(v.get("used_memory", 0)) for v in memory.values())
        count = sum(int(v) for v in sizes.values()) if isinstance(sizes, dict) else int(sizes)
        return used, count
    info = await client.info("memory")
    return int(info.get("used_memory", 0)), int(await client.dbsize())


async def iterate_scan(client: RedisClient, match: str, count: int) -> AsyncIterator[list[bytes]]:
    """Every page of a full SCAN (for tools; the cache bounds each call itself)."""
    for target in scan_targets(client):
        cursor = 0
        while True:
            cursor, found = await scan_page(client, target, cursor, match, count)
            if found:
                yield found
            if cursor == 0:
                break
