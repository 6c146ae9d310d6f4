"""``CacheAside``: the read path every processor shares, over Redis and a loader.

A read GETs the key; a fresh entry is served as ``CACHED`` (and, near expiry,
refreshed early in the background: XFetch). A miss runs one load per key per
process (single-flight) under a short Redis lease, so other instances wait for
the value instead of stampeding the store; the answer is stored with jittered
TTLs, "not found" is cached briefly, and a store failure serves a kept stale
entry as ``STALE``. Redis failures never fail a read (fail open, see
``guard.py``).

Invalidation never fails open. ``invalidate`` (the Invalidate RPC) reports a
Redis failure as ``CacheUnavailable``; ``after_write`` (what follows a
committed write) hands the removal to ``FollowUps``, which retries it until
Redis takes it, and until then this instance reads the affected keys straight
from the store (read-your-writes). Both drop the keys from the L1 before and
again after Redis removed them, so a read that raced the removal cannot leave
the old value in memory. See ``invalidation.py`` for the order in Redis.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from google.protobuf.message import Message

from mcprouter.server.cache.breaker import CircuitBreaker
from mcprouter.server.cache.envelope import Entry, decode
from mcprouter.server.cache.feed import PING_INTERVAL_S, InvalidationFeed
from mcprouter.server.cache.guard import REDIS_ERRORS, Down, GuardedRedis
from mcprouter.server.cache.invalidation import Remover
from mcprouter.server.cache.loading import GET_OR_LEASE, KeyLoader, Loaded
from mcprouter.server.cache.local import LocalCache
from mcprouter.server.cache.policy import CachePolicy, xfetch_due
from mcprouter.server.cache.served import Loader, M, Served, not_found, parse, utc
from mcprouter.server.cache.single_flight import SingleFlight
from mcprouter.server.cache.topology import RedisClient
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.followups import FollowUps
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
        redis: RedisClient,
        keyspace: KeySpace,
        stats: CacheStats,
        breaker: CircuitBreaker,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        redis_timeout: float = 0.25,
        local: LocalCache | None = None,
        followups: FollowUps | None = None,
        feed_ping_interval_s: float = PING_INTERVAL_S,
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
            followups: Runs the invalidations that follow committed writes
                (retried until Redis takes them); ``aclose()`` closes it.
            feed_ping_interval_s: Liveness check of the invalidation feed
                (see ``feed.py``).
        """
        self._guard = GuardedRedis(redis, breaker, stats, redis_timeout)
        self._redis = redis
        self._keyspace = keyspace
        self._stats = stats
        self._clock = clock
        self._rng = rng or random.Random()
        self._flights: SingleFlight[Loaded] = SingleFlight()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._followups = followups if followups is not None else FollowUps()
        self._local = (
            local if local is not None else LocalCache(max_entries=0, max_age=0, clock=clock)
        )
        self._origin = secrets.token_hex(8)
        self._feed = InvalidationFeed(
            redis,
            keyspace.internal("invalidations"),
            apply=self._apply_remote,
            on_connected=self._local.set_coherent,
            ping_interval_s=feed_ping_interval_s,
            ready=self._guard.ready,
        )
        self._loader = KeyLoader(
            self._guard,
            keyspace,
            stats,
            clock=clock,
            rng=self._rng,
            is_current=self._flights.is_current,
        )
        self._remover = Remover(self._guard, keyspace, self._feed.channel, self._origin)
        self._get_or_lease = redis.register_script(GET_OR_LEASE)

    def start(self) -> None:
        """Connect the invalidation feed, which turns the L1 on (if configured)."""
        if self._local.configured:
            self._feed.start()

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding Redis."""
        return self._guard.breaker

    @property
    def feed_connected(self) -> bool | None:
        """Whether the L1's invalidation feed is subscribed; ``None`` without an L1."""
        return self._feed.connected if self._local.configured else None

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
        if not policy.enabled or self.awaiting_invalidation(key):
            # Uncached, or a write of ours is not yet invalidated in Redis:
            # read the store, store nothing (read-your-writes).
            loaded = await self._loader.fetch(key, message_type, loader, policy, None)
            return self._served(key, loaded, message_type, policy)
        local = self._local.get(key)
        if local is not None and (local.value is None or isinstance(local.value, message_type)):
            return self._served_locally(key, local.value, local.stored_at, dt)
        running = self._flights.get(key)
        if running is not None:
            # A load of this key is under way here: share it (no Redis call).
            self._stats.record(dt, Outcome.MISS)
            return await self._join(key, running, message_type, policy)
        if (storing := self._loader.being_stored(key)) is not None:
            # Loaded here a moment ago and on its way to Redis: served from
            # memory without a store query, so a hit.
            if storing.value is None:
                self._stats.record(dt, Outcome.NEGATIVE_HIT)
                raise not_found(key, dt)
            self._stats.record(dt, Outcome.HIT)
            return self._served(key, replace(storing, status=_CACHED), message_type, policy)
        generation = self._local.generation
        lease = self._loader.new_lease(key)
        script = self._get_or_lease
        reply = await self._guard.call(
            "GET",
            key,
            dt,
            lambda: script(keys=lease.script_keys(), args=lease.script_args(policy)),
        )
        raw, leased = (None, False) if isinstance(reply, Down) else (reply[0], bool(reply[1]))
        entry = decode(raw, dt) if raw is not None else None
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
        use_redis = not isinstance(reply, Down)

        def admit(key: str, value: Message | None, stored_at: float, fresh_until: float) -> None:
            self._local.put(
                key, value, stored_at=stored_at, fresh_until=fresh_until, generation=generation
            )

        task, started = self._flights.start(
            key,
            lambda: self._loader.load(
                key,
                message_type,
                loader,
                policy,
                previous,
                use_redis=use_redis,
                lease=lease if leased else None,
                admit=admit,
            ),
        )
        if started:
            self._keep(task)
        elif leased:
            # Another caller started a load while our read was on its way:
            # hand our lease back and share that load.
            self._loader.release_soon(key, dt, lease)
        return await self._join(key, task, message_type, policy)

    async def _join(
        self, key: str, task: asyncio.Task[Loaded], message_type: type[M], policy: CachePolicy
    ) -> Served[M]:
        # shield: a cancelled caller must not cancel the load others wait for.
        loaded = await asyncio.shield(task)
        if loaded.status == _STALE:
            # Per caller: every caller that joined a load which fell back to a
            # stale entry was served STALE, not only the first (a subset of MISS).
            self._stats.record(policy.data_type, Outcome.STALE)
        return self._served(key, loaded, message_type, policy)

    async def invalidate(self, keys: Sequence[str] = (), patterns: Sequence[str] = ()) -> int:
        """Remove keys and patterns now, for the Invalidate RPC; report a failure.

        Runs in a task of its own, so a caller cancelled half-way (a deadline
        during a long SCAN) does not leave the removal half done. Loads of the
        matched keys running in this process are detached: their waiters still
        get the value they asked for, but it is not stored.

        Args:
            keys: Client-visible keys.
            patterns: Validated one-family glob patterns.

        Returns:
            How many values existed and were removed (also counted in stats).

        Raises:
            CacheUnavailable: Redis failed; the values may still be cached.
        """
        unique = list(dict.fromkeys(keys))
        if not unique and not patterns:
            return 0
        task = asyncio.create_task(self._remove(unique, list(patterns)), name="invalidate")
        self._keep(task)
        try:
            return await asyncio.shield(task)
        except REDIS_ERRORS as exc:
            shown = ", ".join(repr(k) for k in [*unique, *patterns][:5])
            raise CacheUnavailable(
                f"could not invalidate {shown}: Redis failed and the cache may still "
                "hold the old values; retry",
                metadata={"key": ",".join(unique[:20]), "pattern": ",".join(patterns[:20])},
            ) from exc

    async def after_write(self, keys: Sequence[str] = (), patterns: Sequence[str] = ()) -> bool:
        """Invalidate what a committed write changed; retried until Redis takes it.

        Every key and pattern is a follow-up of its own (``FollowUps``); until
        it succeeds, reads of what it covers on this instance bypass the
        cache. Waits (shielded) for the first attempts only.

        Returns:
            Whether every first attempt succeeded (else they are being retried).
        """
        targets: list[tuple[str, list[str], list[str]]] = [
            (k, [k], []) for k in dict.fromkeys(keys)
        ]
        targets += [(f"pattern {p}", [], [p]) for p in dict.fromkeys(patterns)]
        self._forget(list(keys), list(patterns))
        results = [
            self._followups.request(f"invalidate {name}", self._removal(ks, ps, by_index=True))
            for name, ks, ps in targets
        ]
        return all(await asyncio.shield(asyncio.gather(*results)))

    def _removal(
        self, keys: list[str], patterns: list[str], *, by_index: bool
    ) -> Callable[[], Coroutine[Any, Any, int]]:
        return lambda: self._remove(keys, patterns, by_index=by_index)

    async def _remove(self, keys: list[str], patterns: list[str], *, by_index: bool = False) -> int:
        self._forget(keys, patterns)
        removed = await self._remover.remove(keys, patterns, by_index=by_index)
        # Again: a read that ran between the first forget and the removal may
        # have admitted the old value to the L1 (read-your-writes).
        self._forget(keys, patterns)
        self._stats.invalidated(removed)
        return removed

    def awaiting_invalidation(self, key: str) -> bool:
        """Whether a write of this instance changed ``key`` and Redis has not yet removed it.

        Such a key's value in Redis may predate the write: reads of it on this
        instance bypass the cache, and ``GetCached`` reports it as a miss.
        """
        if not self._followups:
            return False
        if f"invalidate {key}" in self._followups:
            return True
        return any(
            name.startswith("invalidate pattern ")
            and fnmatch.fnmatchcase(key, name.removeprefix("invalidate pattern "))
            for name in self._followups.pending()
        )

    def _forget(self, keys: Sequence[str], patterns: Sequence[str]) -> None:
        """Drop keys from the L1 and detach their running loads."""
        self._local.drop(keys, patterns)
        self._loader.forget(keys, patterns)
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

    async def settle(self) -> None:
        """Wait for the store-backs of loads done so far (tests, benchmarks, shutdown)."""
        await self._loader.settle()

    async def aclose(self) -> None:
        """Cancel loads still running; give pending invalidations a last try; stop the feed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loader.aclose()
        await self._followups.aclose()
        await self._feed.aclose()

    def _keep(self, task: asyncio.Task[Any]) -> None:
        # Referenced until done, so it cannot be collected mid-flight and
        # aclose() finds it.
        self._tasks.add(task)
        task.add_done_callback(_forget_task(self._tasks))

    def _start_flight(
        self, key: str, factory: Callable[[], Coroutine[Any, Any, Loaded]]
    ) -> asyncio.Task[Loaded]:
        task, started = self._flights.start(key, factory)
        if started:
            self._keep(task)
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


def _forget_task(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller never awaits it

    return done


def _log_refresh_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("early refresh failed: %s: %s", type(exc).__name__, exc)
