"""Stats for the whole fleet: every process publishes its counters; FLEET sums the live ones.

Each server process (each worker of ``serve --workers N``, each replica) owns
its counters (``stats.CacheStats``). To answer ``Stats`` with scope FLEET
without asking every process, each one publishes a snapshot every
``STATS_PUBLISH_INTERVAL_S`` into one Redis hash, ``_stats`` under the key
namespace (one key, so one slot on a cluster and no SCAN), one field per
process (its ``instance``: host/pid/random). A reader takes its own counters
live and every other entry published within three of its publisher's
intervals; older entries belong to processes that stopped or died: they
are left out, and removed once ten intervals old. A process that stops
cleanly removes its own entry at once. The hash carries a TTL refreshed by
every publish, so a fleet that is gone leaves nothing behind.

Freshness: another process's figures are at most one interval old (plus a
Redis round trip) while it lives; ``FleetView.max_age_s`` says how old the
oldest included entry is. Sums drop when a process leaves (its counters go
with it), as a Prometheus ``sum`` over live targets does.

Publishing goes through the cache role's guarded door and fails open: with
Redis down the fleet view is this process alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome, StatsSnapshot
from mcprouter.v1.serve_status_pb2 import DataType

log = logging.getLogger(__name__)

LIVE_INTERVALS = 3
PRUNE_INTERVALS = 10
MIN_KEY_TTL_S = 60


def instance_id() -> str:
    """A name for this process, unique across machines and restarts."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def encode(snapshot: StatsSnapshot, *, published_at: float, interval_s: float) -> str:
    """The JSON an entry of the hash holds."""
    return json.dumps(
        {
            "published_at": published_at,
            "interval_s": interval_s,
            "started_at": snapshot.started_at.timestamp(),
            "total_operations": snapshot.total_operations,
            "dedup_hits": snapshot.dedup_hits,
            "invalidations": snapshot.invalidations,
            "redis_errors": snapshot.redis_errors,
            "per_type": {
                str(int(t)): {o.value: n for o, n in counts.items()}
                for t, counts in snapshot.per_type.items()
            },
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True, slots=True)
class Published:
    """One decoded entry: a process's snapshot, when and how often it publishes."""

    snapshot: StatsSnapshot
    published_at: float
    interval_s: float


def decode(raw: bytes | str) -> Published:
    """An entry of the hash (``ValueError`` when it is not one)."""
    try:
        data: dict[str, Any] = json.loads(raw)
        outcomes = {o.value: o for o in Outcome}
        per_type = {
            DataType.ValueType(int(t)): {outcomes[o]: int(n) for o, n in counts.items()}
            for t, counts in data["per_type"].items()
        }
        snapshot = StatsSnapshot(
            started_at=datetime.fromtimestamp(float(data["started_at"]), UTC),
            total_operations=int(data["total_operations"]),
            per_type=per_type,
            dedup_hits=int(data["dedup_hits"]),
            invalidations=int(data["invalidations"]),
            redis_errors=int(data["redis_errors"]),
        )
        return Published(snapshot, float(data["published_at"]), float(data["interval_s"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a stats entry: {exc}") from exc


def total(snapshots: Sequence[StatsSnapshot]) -> StatsSnapshot:
    """The sum of several processes' counters (started at the earliest start)."""
    per_type: dict[DataType.ValueType, dict[Outcome, int]] = {}
    for snap in snapshots:
        for data_type, counts in snap.per_type.items():
            into = per_type.setdefault(data_type, {})
            for outcome, count in counts.items():
                into[outcome] = into.get(outcome, 0) + count
    return StatsSnapshot(
        started_at=min(s.started_at for s in snapshots),
        total_operations=sum(s.total_operations for s in snapshots),
        per_type=per_type,
        dedup_hits=sum(s.dedup_hits for s in snapshots),
        invalidations=sum(s.invalidations for s in snapshots),
        redis_errors=sum(s.redis_errors for s in snapshots),
    )


@dataclass(frozen=True, slots=True)
class FleetView:
    """Counters summed over ``instances`` (this process first)."""

    snapshot: StatsSnapshot
    instances: tuple[str, ...]
    max_age_s: float


class FleetStats:
    """Publishes this process's counters and sums the fleet's; see the module doc."""

    def __init__(
        self,
        guard: GuardedRedis,
        keyspace: KeySpace,
        stats: CacheStats,
        *,
        interval_s: float,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Borrow the cache role's door and this process's counters.

        Args:
            guard: The cache role's guarded Redis door (fails open).
            keyspace: Namespace of the hash.
            stats: This process's counters.
            interval_s: Seconds between publishes; 0: never publish.
            instance: This process's name (default: ``instance_id()``).
            clock: Wall clock (entries are compared across machines).
        """
        self._guard = guard
        self._key = keyspace.internal("stats")
        self._stats = stats
        self._interval = interval_s
        self.instance = instance or instance_id()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Publish now and every interval, in the background (no-op with interval 0)."""
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-publisher")

    async def _run(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception:  # a bug must not end the publishing for good
                log.exception("publishing the Stats counters failed")
            await asyncio.sleep(self._interval)

    async def publish(self) -> None:
        """Write this process's entry and refresh the hash's TTL (fails open)."""
        entry = encode(
            self._stats.snapshot(), published_at=self._clock(), interval_s=self._interval
        )
        ttl = max(MIN_KEY_TTL_S, int(self._interval * PRUNE_INTERVALS) + 1)
        client = self._guard.client

        async def write() -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(self._key, self.instance, entry)
                pipe.expire(self._key, ttl)
                await pipe.execute()

        await self._guard.call("HSET", "_stats", DataType.DATA_TYPE_UNSPECIFIED, write)

    async def fleet(self) -> FleetView:
        """This process's counters (live) plus every live published entry."""
        own = self._stats.snapshot()
        client = self._guard.client

        async def read() -> dict[Any, Any]:
            entries: dict[Any, Any] = await client.hgetall(self._key)
            return entries

        entries = await self._guard.call("HGETALL", "_stats", DataType.DATA_TYPE_UNSPECIFIED, read)
        if isinstance(entries, Down):
            return FleetView(own, (self.instance,), 0.0)
        now = self._clock()
        snapshots, instances, ages, dead = [own], [self.instance], [0.0], []
        for raw_name, raw in entries.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            if name == self.instance:
                continue
            try:
                entry = decode(raw)
            except ValueError:
                dead.append(name)
                continue
            age = max(0.0, now - entry.published_at)
            interval = max(entry.interval_s, 0.001)
            if age <= LIVE_INTERVALS * interval:
                snapshots.append(entry.snapshot)
                instances.append(name)
                ages.append(age)
            elif age > PRUNE_INTERVALS * interval:
                dead.append(name)
        if dead:
            await self._guard.call(
                "HDEL", "_stats", DataType.DATA_TYPE_UNSPECIFIED,
                lambda: client.hdel(self._key, *dead),
            )  # fmt: skip
        return FleetView(total(snapshots), tuple(instances), max(ages))

    async def aclose(self) -> None:
        """Stop publishing and remove this process's entry (best effort)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            client = self._guard.client
            await self._guard.call(
                "HDEL", "_stats", DataType.DATA_TYPE_UNSPECIFIED,
                lambda: client.hdel(self._key, self.instance),
            )  # fmt: skip
