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
import itertools
import logging
import random
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from google.protobuf.message import Message

from mcprouter.server.cache.envelope import Entry, decode, encode_answer
from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.cache.policy import CachePolicy
from mcprouter.server.cache.served import Loader, M, check_type, parse, unavailable
from mcprouter.server.errors import RouterError, Unavailable
from mcprouter.server.keys import KeySpace, index_of
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

logger = logging.getLogger("mcprouter.server.cache")

# The read of a miss and the lease in one round trip (the memcache lease
# idea): the value if there is one, else whether we now hold the lease.
# KEYS: value, lease[, index]; ARGV: token, lease ms[, index ms]. A key of an
# indexed family joins its experiment's index when its lease is taken, so an
# experiment write finds it (and its lease) without a SCAN.
_LEASE_AND_INDEX = """
local function lease()
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
  if KEYS[3] then
    redis.call('SADD', KEYS[3], KEYS[1])
    if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
      redis.call('PEXPIRE', KEYS[3], ARGV[3])
    end
  end
  return 1
end
"""
GET_OR_LEASE = (
    _LEASE_AND_INDEX
    + """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
return {false, lease()}
"""
)
_TAKE_LEASE = _LEASE_AND_INDEX + "return lease()"
# Deletes the lease only while it still holds our token: a lease that expired
# and was taken by another instance is not ours to release.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Stores the value and releases the lease, only while our lease still stands.
# An invalidation by a write on any instance deletes the lease, so a load that
# read the store before that write cannot put its old value back.
_STORE_AND_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
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
class Lease:
    """A load lease: its Redis key and our token (and the index the key joins, if any)."""

    key: str
    token: str
    value_key: str
    index: str | None = None

    def script_keys(self) -> list[str]:
        """KEYS of ``GET_OR_LEASE`` / ``_TAKE_LEASE``: value, lease[, index]."""
        return (
            [self.value_key, self.key]
            if self.index is None
            else [
                self.value_key,
                self.key,
                self.index,
            ]
        )

    def script_args(self, policy: CachePolicy) -> list[str | int]:
        """ARGV of ``GET_OR_LEASE`` / ``_TAKE_LEASE``."""
        args: list[str | int] = [self.token, policy.lease_ttl_ms]
        if self.index is not None:
            # The index outlives the longest entry it may point at.
            args.append(policy.entry_ttl_ms(policy.fresh_ttl * (1 + policy.jitter)))
        return args


Admit = Callable[[str, Message | None, float, float], None]
"""Offers a freshly loaded value to the L1: key, value, stored_at, fresh_until."""


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
        self._store_and_release = guard.client.register_script(_STORE_AND_RELEASE)
        self._renew_lease = guard.client.register_script(_RENEW_LEASE)
        self._take_lease_script = guard.client.register_script(_TAKE_LEASE)
        self._prefix = secrets.token_hex(8)
        self._tokens = itertools.count()
        # Store-backs run after the waiters got their value (off the critical path).
        self._background: set[asyncio.Task[Any]] = set()
        self._storing: dict[str, tuple[Loaded, float]] = {}  # key: (value, fresh until)

    def new_lease(self, key: str) -> Lease:
        """A lease for ``key`` with a token no other load uses."""
        indexed = index_of(key)
        return Lease(
            self._keyspace.lease(key),
            f"{self._prefix}{next(self._tokens)}",
            self._keyspace.redis_key(key),
            None if indexed is None else self._keyspace.index(*indexed),
        )

    async def settle(self) -> None:
        """Wait until every store-back and lease release started so far is done."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Let the store-backs in flight finish (they are one round trip each)."""
        await self.settle()

    async def load(
        self,
        key: str,
        message_type: type[M],
        loader: Loader[M],
        policy: CachePolicy,
        previous: Entry | None,
        *,
        use_redis: bool,
        lease: Lease | None = None,
        admit: Admit | None = None,
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
            lease: The lease, if the read already took it (``GET_OR_LEASE``).
            admit: Offers the loaded value to the L1.
            refresh: This is an early refresh; if another instance holds the
                lease (or Redis failed), give up and keep serving ``previous``.
        """
        dt = policy.data_type
        if use_redis and lease is None:
            lease = self.new_lease(key)
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
            if got is not True:
                lease = None
        return await self.fetch(
            key, message_type, loader, policy, previous, lease=lease, admit=admit
        )

    async def _take_lease(self, key: str, lease: Lease, policy: CachePolicy) -> bool | Down:
        take = self._take_lease_script
        got = await self._guard.call(
            "lease",
            key,
            policy.data_type,
            lambda: take(keys=lease.script_keys(), args=lease.script_args(policy)),
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
        lease: Lease | None = None,
        admit: Admit | None = None,
    ) -> Loaded:
        """Call the loader; store its answer if ``lease`` is given and still ours.

        Falls back to ``previous`` when the store fails. Without ``lease``
        nothing is stored. The store (and the lease's release) runs in the
        background: the callers have their value one Redis round trip sooner.
        """
        dt = policy.data_type
        started = self._clock()
        try:
            value = await self._load_keeping_lease(key, loader, policy, lease)
        except BaseException as exc:
            if lease is not None:
                self._in_background(self._release(key, dt, lease))
            if not isinstance(exc, Exception) or (
                isinstance(exc, RouterError) and not isinstance(exc, Unavailable)
            ):
                raise  # cancelled, or the store answered (InvalidArgument, ...): cache nothing
            self._stats.record(dt, Outcome.LOAD_ERROR)
            return self._fall_back(key, message_type, policy, previous, exc)
        self._stats.record(dt, Outcome.LOAD)
        check_type(key, value, message_type)
        now = self._clock()
        # A load detached by invalidate() may predate the write: do not keep it.
        current = self._is_current(key, asyncio.current_task())
        if not current:
            if lease is not None:
                self._in_background(self._release(key, dt, lease))
            return Loaded(value, _FRESH, now)
        if lease is not None or admit is not None:
            payload = None if value is None else value.SerializeToString()
            blob, ttl_ms, fresh_until = encode_answer(
                policy, payload, now=now, load_duration=now - started, rng=self._rng
            )
            loaded = Loaded(value, _FRESH, now)
            if lease is not None:
                # Until Redis has it, a read here gets the value from memory:
                # it would otherwise miss, find our lease and wait for it.
                self._storing[key] = (loaded, fresh_until)
                self._in_background(self._store_back(key, dt, lease, blob, ttl_ms, loaded))
            if admit is not None:
                admit(key, value, now, fresh_until)
            return loaded
        return Loaded(value, _FRESH, now)

    async def _store_back(  # noqa: PLR0917 - one call site, all positional and distinct
        self,
        key: str,
        data_type: DataType.ValueType,
        lease: Lease,
        blob: bytes,
        ttl_ms: int,
        loaded: Loaded,
    ) -> None:
        store = self._store_and_release
        try:
            await self._guard.call(
                "SET",
                key,
                data_type,
                lambda: store(keys=[lease.value_key, lease.key], args=[lease.token, blob, ttl_ms]),
            )
        finally:
            if (storing := self._storing.get(key)) is not None and storing[0] is loaded:
                del self._storing[key]

    def being_stored(self, key: str) -> Loaded | None:
        """The still fresh value a load of ``key`` here is storing right now, if any."""
        storing = self._storing.get(key)
        if storing is None or self._clock() >= storing[1]:
            return None
        return storing[0]

    def forget(self, keys: Sequence[str], patterns: Sequence[str]) -> None:
        """An invalidation: values on their way to Redis are no longer served from memory."""
        for key in keys:
            self._storing.pop(key, None)
        if patterns:
            for key in [k for k in self._storing if any(fnmatchcase(k, p) for p in patterns)]:
                del self._storing[key]

    async def _release(self, key: str, data_type: DataType.ValueType, lease: Lease) -> None:
        release = self._release_lease
        await self._guard.call(
            "lease release", key, data_type, lambda: release(keys=[lease.key], args=[lease.token])
        )

    def release_soon(self, key: str, data_type: DataType.ValueType, lease: Lease) -> None:
        """Give a lease back in the background (its holder will not load)."""
        self._in_background(self._release(key, data_type, lease))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_keeping_lease(
        self, key: str, loader: Loader[M], policy: CachePolicy, lease: Lease | None
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

    async def _keep_alive(self, key: str, lease: Lease, policy: CachePolicy) -> None:
        renew = self._renew_lease
        while True:
            kept = await self._guard.call(
                "lease renewal",
                key,
                policy.data_type,
                lambda: renew(keys=[lease.key], args=[lease.token, policy.lease_ttl_ms]),
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
