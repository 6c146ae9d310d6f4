"""One key's load: lease, wait for another leaseholder, load, store, stale-if-error.

``KeyLoader.load`` runs as the single-flight task of its key, so everything in
here happens once per key per process however many callers wait.

The one rule that keeps old values out of the cache: **a loaded value is
stored only under a lease that is still ours when the store happens**
(``_STORE_IF_LEASED``). Every invalidation deletes the leases of what it
removes (``invalidation.py``), so a load that read its store before a write
committed can never put its value back after the write's invalidation. A
caller that lost the lease and found no value after waiting tries to take
the lease once more; without it, it serves what it loaded and stores nothing.
A lease is short-lived (so a crashed holder blocks others briefly), and kept
alive while its load runs, so a slow load (analytics, search) is still stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from mcprouter.server.cache.envelope import Entry, decode, encode_answer
from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.cache.invalidation import lease_key
from mcprouter.server.cache.policy import CachePolicy
from mcprouter.server.cache.served import Loader, M, check_type, parse, unavailable
from mcprouter.server.errors import RouterError, Unavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import ServeStatus

logger = logging.getLogger("mcprouter.server.cache")

# Deletes the lease only while it still holds our token: a lease that expired
# and was taken by another instance is not ours to release.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Stores the value only while our lease still stands. An invalidation by a
# write on any instance deletes the lease, so a load that read the store before
# that write cannot put its old value back (memcache-style lease semantics).
_STORE_IF_LEASED = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# Extends the lease only while it still holds our token.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# How many times a caller that lost the lease looks for the value in lease_wait_ms.
_LEASE_POLLS = 6
_CACHED = ServeStatus.SERVE_STATUS_CACHED
_FRESH = ServeStatus.SERVE_STATUS_FRESH
_STALE = ServeStatus.SERVE_STATUS_STALE


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one load produced; shared by every waiter of a single-flight."""

    value: Message | None  # None: the store has no such value
    status: ServeStatus.ValueType
    stored_at: float


class KeyLoader:
    """Loads single keys; borrows the collaborators of ``CacheAside``."""

    def __init__(
        self,
        guard: GuardedRedis,
        keyspace: KeySpace,
        stats: CacheStats,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        is_current: Callable[[str, asyncio.Task[Any] | None], bool],
    ) -> None:
        self._guard = guard
        self._redis = guard.client
        self._keyspace = keyspace
        self._stats = stats
        self._clock = clock
        self._rng = rng
        # False once invalidate() detached the running load of a key.
        self._is_current = is_current
        self._release_lease = guard.client.register_script(_RELEASE_LEASE)
        self._store_if_leased = guard.client.register_script(_STORE_IF_LEASED)
        self._renew_lease = guard.client.register_script(_RENEW_LEASE)

    async def load(
        self,
        key: str,
        message_type: type[M],
        loader: Loader[M],
        policy: CachePolicy,
        previous: Entry | None,
        *,
        use_redis: bool,
        refresh: bool = False,
    ) -> Loaded:
        """Load ``key``; store the answer only under our lease.

        Args:
            key: Client-visible key.
            message_type: The message class of the value.
            loader: Reads the store.
            policy: TTLs and lease timings.
            previous: The entry read before (stale, or fresh for a refresh).
            use_redis: ``False`` when Redis failed just now: load without
                lease and do not store.
            refresh: This is an early refresh; if another instance holds the
                lease (or Redis failed), give up and keep serving ``previous``.
        """
        dt = policy.data_type
        lease = (lease_key(self._keyspace, key), secrets.token_hex(16))
        leased = False
        if use_redis:
            got = await self._take_lease(key, lease, policy)
            if refresh and previous is not None and got is not True:
                # Another instance is refreshing, or Redis just failed and the
                # result could not be stored: keep serving the fresh entry.
                return Loaded(parse(previous.payload, message_type), _CACHED, previous.stored_at)
            if got is False:
                self._stats.record(dt, Outcome.LEASE_WAIT)
                waited = await self._wait_for_leaseholder(key, message_type, policy)
                if waited is not None:
                    return waited
                # The holder is slow or gone: try once more, else load unstored.
                got = await self._take_lease(key, lease, policy)
            leased = got is True
        try:
            return await self.fetch(
                key, message_type, loader, policy, previous, lease=lease if leased else None
            )
        finally:
            if leased:
                release = self._release_lease
                await self._guard.call(
                    "lease release", key, dt, lambda: release(keys=[lease[0]], args=[lease[1]])
                )

    async def _take_lease(
        self, key: str, lease: tuple[str, str], policy: CachePolicy
    ) -> bool | Down:
        lease_key_, token = lease
        got = await self._guard.call(
            "lease",
            key,
            policy.data_type,
            lambda: self._redis.set(lease_key_, token, nx=True, px=policy.lease_ttl_ms),
        )
        return got if isinstance(got, Down) else bool(got)

    async def _wait_for_leaseholder(
        self, key: str, message_type: type[M], policy: CachePolicy
    ) -> Loaded | None:
        """Poll for the value another instance is loading; ``None`` if it did not come."""
        dt = policy.data_type
        rkey = self._keyspace.redis_key(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.lease_wait_ms / 1000
        interval = max(policy.lease_wait_ms / 1000 / _LEASE_POLLS, 0.005)
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(interval, remaining))
            raw = await self._guard.call("GET", key, dt, lambda: self._redis.get(rkey))
            if isinstance(raw, Down):
                return None
            entry = decode(raw, dt)
            if entry is None or not entry.is_fresh(self._clock()):
                continue
            value = None if entry.not_found else parse(entry.payload, message_type)
            if entry.not_found or value is not None:
                return Loaded(value, _CACHED, entry.stored_at)
        return None

    async def fetch(
        self,
        key: str,
        message_type: type[M],
        loader: Loader[M],
        policy: CachePolicy,
        previous: Entry | None,
        *,
        lease: tuple[str, str] | None = None,
    ) -> Loaded:
        """Call the loader; store its answer if ``lease`` is given and still ours.

        Falls back to ``previous`` when the store fails. Without ``lease`` (its
        Redis key and our token) nothing is stored.
        """
        dt = policy.data_type
        started = self._clock()
        try:
            value = await self._load_keeping_lease(key, loader, policy, lease)
        except Exception as exc:
            if isinstance(exc, RouterError) and not isinstance(exc, Unavailable):
                raise  # the store answered (InvalidArgument, ...): propagate, cache nothing
            self._stats.record(dt, Outcome.LOAD_ERROR)
            return self._fall_back(key, message_type, policy, previous, exc)
        self._stats.record(dt, Outcome.LOAD)
        check_type(key, value, message_type)
        now = self._clock()
        # A load detached by invalidate() may predate the write: do not store it.
        if lease is not None and self._is_current(key, asyncio.current_task()):
            payload = None if value is None else value.SerializeToString()
            blob, ttl_ms = encode_answer(
                policy, payload, now=now, load_duration=now - started, rng=self._rng
            )
            rkey = self._keyspace.redis_key(key)
            lease_key_, token = lease
            store = self._store_if_leased
            await self._guard.call(
                "SET", key, dt, lambda: store(keys=[rkey, lease_key_], args=[token, blob, ttl_ms])
            )
        return Loaded(value, _FRESH, now)

    async def _load_keeping_lease(
        self, key: str, loader: Loader[M], policy: CachePolicy, lease: tuple[str, str] | None
    ) -> M | None:
        """Run the loader; while it runs past a third of the lease TTL, extend the lease."""
        if lease is None:
            return await loader()
        # Most loads end well within a third of the TTL: a timer, not a task, until then.
        loop = asyncio.get_running_loop()
        renewers: list[asyncio.Task[None]] = []
        timer = loop.call_later(
            policy.lease_ttl_ms / 3000,
            lambda: renewers.append(loop.create_task(self._keep_alive(key, lease, policy))),
        )
        try:
            return await loader()
        finally:
            timer.cancel()
            for renewer in renewers:
                renewer.cancel()

    async def _keep_alive(self, key: str, lease: tuple[str, str], policy: CachePolicy) -> None:
        lease_key_, token = lease
        renew = self._renew_lease
        while True:
            kept = await self._guard.call(
                "lease renewal",
                key,
                policy.data_type,
                lambda: renew(keys=[lease_key_], args=[token, policy.lease_ttl_ms]),
            )
            if kept == 0:
                return  # invalidated (or expired): the store will be refused anyway
            await asyncio.sleep(policy.lease_ttl_ms / 3000)

    def _fall_back(
        self,
        key: str,
        message_type: type[M],
        policy: CachePolicy,
        previous: Entry | None,
        exc: Exception,
    ) -> Loaded:
        """Serve the kept copy after a store failure, or raise ``Unavailable``."""
        value = None if previous is None else parse(previous.payload, message_type)
        if previous is None or value is None:
            logger.warning(
                "store failed for %r (%s: %s); nothing stale to serve",
                key,
                type(exc).__name__,
                exc,
            )
            raise unavailable([key], policy.data_type) from exc
        if previous.is_fresh(self._clock()):
            # A failed early refresh: the entry is still fresh.
            return Loaded(value, _CACHED, previous.stored_at)
        logger.warning("store failed for %r (%s); serving it STALE", key, type(exc).__name__)
        return Loaded(value, _STALE, previous.stored_at)
