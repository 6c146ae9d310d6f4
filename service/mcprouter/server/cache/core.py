"""``CacheAside``: the read path every processor shares, over Redis and a loader.

A read GETs the key; a fresh entry is served as ``CACHED`` (and, near expiry,
refreshed early in the background: XFetch). A miss runs one load per key per
process (single-flight) under a short Redis lease, so other instances wait for
the value instead of stampeding the store; the answer is stored with jittered
TTLs, "not found" is cached briefly, and a store failure serves a kept stale
entry as ``STALE``. Redis failures never fail a read (fail open, see
``guard.py``). Invalidation is the exception: it raises ``CacheUnavailable``,
because a write must not silently leave stale data behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.message import Message

from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.cache.bulk import BulkReader
from mcprouter.server.cache.envelope import Entry, decode
from mcprouter.server.cache.feed import InvalidationFeed, encode_message
from mcprouter.server.cache.guard import REDIS_ERRORS, Down, GuardedRedis
from mcprouter.server.cache.loading import KeyLoader, Loaded
from mcprouter.server.cache.local import LocalCache
from mcprouter.server.cache.policy import CachePolicy, xfetch_due
from mcprouter.server.cache.served import BulkLoader, Loader, M, Served, not_found, parse, utc
from mcprouter.server.cache.single_flight import SingleFlight
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

logger = logging.getLogger("mcprouter.server.cache")

_CACHED = ServeStatus.SERVE_STATUS_CACHED
_STALE = ServeStatus.SERVE_STATUS_STALE


class CacheAside:
    """The shared cache-aside core; processors hold one and pass a policy per call."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: KeySpace,
        stats: CacheStats,
        breaker: CircuitBreaker,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        redis_timeout: float = 0.25,
        local: LocalCache | None = None,
    ) -> None:
        """Borrow a Redis client (bytes replies: ``decode_responses=False``).

        Args:
            redis: The client; its owner closes it, after ``aclose()``.
            keyspace: Adds the namespace to client-visible keys.
            stats: Where every outcome is counted.
            breaker: Skips Redis while it keeps failing; may be shared.
            clock: Epoch seconds, for freshness and load durations.
            rng: Random source of TTL jitter and XFetch.
            redis_timeout: Bound on each Redis call, in seconds.
            local: An in-process L1 to serve hot keys from; it serves once
                ``start()`` has connected the invalidation feed.
        """
        self._guard = GuardedRedis(redis, breaker, stats, redis_timeout)
        self._redis = redis
        self._keyspace = keyspace
        self._stats = stats
        self._clock = clock
        self._rng = rng or random.Random()
        self._flights: SingleFlight[Loaded] = SingleFlight()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._local = (
            local if local is not None else LocalCache(max_entries=0, max_age=0, clock=clock)
        )
        self._origin = secrets.token_hex(8)
        self._feed = InvalidationFeed(
            redis,
            keyspace.internal("invalidations"),
            apply=self._apply_remote,
            on_connected=self._local.set_coherent,
        )
        self._loader = KeyLoader(
            self._guard,
            keyspace,
            stats,
            clock=clock,
            rng=self._rng,
            is_current=self._flights.is_current,
        )
        self._bulk = BulkReader(
            self._guard,
            keyspace,
            stats,
            clock=clock,
            rng=self._rng,
            generation=lambda: self._generation,
        )

    def start(self) -> None:
        """Connect the invalidation feed, which turns the L1 on (if configured)."""
        if self._local.configured:
            self._feed.start()

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding Redis."""
        return self._guard.breaker

    @property
    def guard(self) -> GuardedRedis:
        """The Redis boundary (timeouts, breaker, counters), for a processor's own keys."""
        return self._guard

    async def get_or_load(
        self, key: str, message_type: type[M], loader: Loader[M], policy: CachePolicy
    ) -> Served[M]:
        """Serve ``key`` from the cache, or load, store and serve it.

        Args:
            key: Client-visible key, e.g. ``experiment:exp-1``.
            message_type: The message class the payload holds.
            loader: Reads the store; returns ``None`` when it has no such value.
            policy: TTLs, lease and early refresh of this data type.

        Returns:
            The value, served ``CACHED``, ``FRESH`` or ``STALE``.

        Raises:
            NotFound: The store has no such value (possibly cached as such).
            Unavailable: The store failed and no stale copy is cached.
            RouterError: Any other ``RouterError`` the loader raised, unchanged.
        """
        dt = policy.data_type
        if not policy.enabled:
            loaded = await self._loader.fetch(
                key, message_type, loader, policy, None, use_redis=False
            )
            return self._served(key, loaded, message_type, policy)
        local = self._local.get(key)
        if local is not None and (local.value is None or isinstance(local.value, message_type)):
            return self._served_locally(key, local.value, local.stored_at, dt)
        generation = self._local.generation
        rkey = self._keyspace.redis_key(key)
        raw = await self._guard.call("GET", key, dt, lambda: self._redis.get(rkey))
        entry = None if isinstance(raw, Down) else decode(raw, dt)
        if entry is not None and entry.is_fresh(self._clock()):
            if entry.not_found:
                self._local.put(
                    key,
                    None,
                    stored_at=entry.stored_at,
                    fresh_until=entry.fresh_until,
                    generation=generation,
                )
                self._stats.record(dt, Outcome.NEGATIVE_HIT)
                raise not_found(key, dt)
            value = parse(entry.payload, message_type)
            if value is not None:
                self._local.put(
                    key,
                    value,
                    stored_at=entry.stored_at,
                    fresh_until=entry.fresh_until,
                    generation=generation,
                )
                self._stats.record(dt, Outcome.HIT)
                self._maybe_refresh_early(key, message_type, loader, policy, entry)
                return Served(value, _CACHED, key, utc(entry.stored_at))
            entry = None  # an undecodable payload is a miss
        self._stats.record(dt, Outcome.MISS)
        previous = entry if entry is not None and not entry.not_found else None
        use_redis = not isinstance(raw, Down)
        task = self._start_flight(
            key,
            lambda: self._loader.load(
                key, message_type, loader, policy, previous, use_redis=use_redis
            ),
        )
        # shield: a cancelled caller must not cancel the load others wait for.
        loaded = await asyncio.shield(task)
        if loaded.status == _STALE:
            # Per caller: every caller that joined a load which fell back to a
            # stale entry was served STALE, not only the first (a subset of MISS).
            self._stats.record(dt, Outcome.STALE)
        return self._served(key, loaded, message_type, policy)

    async def get_many_or_load(
        self,
        keys: Sequence[str],
        message_type: type[M],
        loader: BulkLoader[M],
        policy: CachePolicy,
    ) -> dict[str, Served[M] | None]:
        """Serve many keys with one MGET, one loader call and one store pipeline.

        Keys absent from the loader's mapping are not found: they are cached as
        such and answered ``None``. Bulk reads take no lease, are not
        single-flighted and do not refresh early.

        Args:
            keys: Client-visible keys; duplicates are served once.
            message_type: The message class the payloads hold.
            loader: Loads the missing keys; returns the found ones by key.
            policy: TTLs of this data type.

        Returns:
            Every requested key mapped to its answer, or ``None`` if not found.

        Raises:
            Unavailable: The store failed and some missing key has no stale copy.
            RouterError: Any other ``RouterError`` the loader raised, unchanged.
        """
        return await self._bulk.read(keys, message_type, loader, policy)

    async def invalidate(self, keys: Sequence[str]) -> int:
        """Remove client-visible keys (and their leases) from the cache with UNLINK.

        Loads of these keys running in this process are detached: their waiters
        still get the value they asked for before the write, but it is not
        stored, and later reads start a new load. Unlike reads, invalidation does
        not fail open and does not wait for an open breaker (it always tries): a
        write must not report success while the cache may still hold old data.

        Args:
            keys: Client-visible keys.

        Returns:
            How many of them existed and were removed (also counted in stats).

        Raises:
            CacheUnavailable: Redis failed; the keys may still be cached.
        """
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        self._forget(unique, [])
        message = encode_message(unique, [], origin=self._origin)

        async def unlink() -> int:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.unlink(*(self._keyspace.redis_key(k) for k in unique))
                pipe.unlink(*(self._keyspace.internal("lease", k) for k in unique))
                # After the UNLINKs: when other instances hear of it, it is done.
                pipe.publish(self._feed.channel, message)
                removed, _, _ = await pipe.execute()
            return int(removed)

        try:
            removed = await self._guard.strict(unlink)
        except REDIS_ERRORS as exc:
            shown = ", ".join(repr(k) for k in unique[:5])
            raise CacheUnavailable(
                f"could not invalidate {shown}{' ...' if len(unique) > 5 else ''}: "
                "Redis failed and the cache may still hold the old values; retry",
                metadata={"key": ",".join(unique[:20])},
            ) from exc
        self._stats.invalidated(removed)
        return removed

    async def announce(self, patterns: Sequence[str]) -> None:
        """Tell every instance's L1 that keys matching ``patterns`` were removed.

        For invalidations done outside this core (SCAN + UNLINK by pattern);
        call it after the keys are gone from Redis.

        Raises:
            CacheUnavailable: Redis failed; other instances may serve the old
                values from memory for up to the L1's ``max_age``.
        """
        self._forget([], patterns)
        message = encode_message([], patterns, origin=self._origin)
        try:
            await self._guard.strict(lambda: self._redis.publish(self._feed.channel, message))
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(
                "removed the keys but could not announce it to other instances: "
                f"{', '.join(patterns[:5])}",
                metadata={"pattern": ",".join(patterns[:20])},
            ) from exc

    def _forget(self, keys: Sequence[str], patterns: Sequence[str]) -> None:
        """Drop keys from the L1 and detach their running loads."""
        self._generation += 1
        self._local.drop(keys, patterns)
        for key in [*keys, *self._flights.matching(patterns)]:
            self._flights.forget(key)

    def _apply_remote(self, keys: list[str], patterns: list[str], origin: str) -> None:
        if origin != self._origin:  # our own were applied when made
            self._forget(keys, patterns)

    def _served_locally(
        self, key: str, value: Message | None, stored_at: float, dt: DataType.ValueType
    ) -> Served[Any]:
        if value is None:
            self._stats.record(dt, Outcome.NEGATIVE_HIT)
            raise not_found(key, dt)
        self._stats.record(dt, Outcome.HIT)
        self._stats.record(dt, Outcome.LOCAL_HIT)
        return Served(value, _CACHED, key, utc(stored_at))

    async def aclose(self) -> None:
        """Cancel and await every load still running, background refreshes included."""
        await self._feed.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_flight(
        self, key: str, factory: Callable[[], Coroutine[Any, Any, Loaded]]
    ) -> asyncio.Task[Loaded]:
        task, started = self._flights.start(key, factory)
        if started:
            # Referenced until done, so it cannot be collected mid-flight and
            # aclose() finds it.
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return task

    def _maybe_refresh_early(
        self, key: str, message_type: type[M], loader: Loader[M], policy: CachePolicy, entry: Entry
    ) -> None:
        if key in self._flights or not xfetch_due(
            now=self._clock(),
            fresh_until=entry.fresh_until,
            load_duration=entry.load_duration,
            beta=policy.xfetch_beta,
            rng=self._rng,
        ):
            return
        task = self._start_flight(
            key,
            lambda: self._loader.load(
                key, message_type, loader, policy, entry, use_redis=True, refresh=True
            ),
        )
        self._stats.record(policy.data_type, Outcome.EARLY_REFRESH)
        task.add_done_callback(_log_refresh_failure)

    def _served(
        self, key: str, loaded: Loaded, message_type: type[M], policy: CachePolicy
    ) -> Served[M]:
        value = loaded.value
        if value is None:
            raise not_found(key, policy.data_type)
        if not isinstance(value, message_type):
            raise TypeError(f"{key!r} was loaded as {type(value).__name__}, not {message_type}")
        return Served(value, loaded.status, key, utc(loaded.stored_at))


def _log_refresh_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("early refresh failed: %s: %s", type(exc).__name__, exc)
