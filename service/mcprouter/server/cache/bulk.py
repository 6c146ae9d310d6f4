"""The bulk read path: one MGET, one loader call and one store pipeline.

Bulk reads take no lease, are not single-flighted and do not refresh early:
the one batched loader call is already the cheap path for the store, and
coordinating per key would cost more round trips than it saves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from mcprouter.server.cache.envelope import Entry, decode, encode_answer
from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.cache.policy import CachePolicy
from mcprouter.server.cache.served import BulkLoader, M, Served, check_type, parse, unavailable, utc
from mcprouter.server.errors import RouterError, Unavailable
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats, Outcome
from mcprouter.v1.serve_status_pb2 import ServeStatus


class BulkReader:
    """Serves many keys at once; borrows the collaborators of ``CacheAside``."""

    def __init__(
        self,
        guard: GuardedRedis,
        keyspace: KeySpace,
        stats: CacheStats,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        generation: Callable[[], int],
    ) -> None:
        self._guard = guard
        self._keyspace = keyspace
        self._stats = stats
        self._clock = clock
        self._rng = rng
        # Bumped by every invalidation; a load that overlapped one skips storing.
        self._generation = generation

    async def read(
        self, keys: Sequence[str], message_type: type[M], loader: BulkLoader[M], policy: CachePolicy
    ) -> dict[str, Served[M] | None]:
        """See ``CacheAside.get_many_or_load``."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        if not policy.enabled:
            return await self._load(wanted, message_type, loader, policy, {}, use_redis=False)
        dt = policy.data_type
        rkeys = [self._keyspace.redis_key(k) for k in wanted]
        client = self._guard.client
        raws = await self._guard.call("MGET", wanted[0], dt, lambda: client.mget(rkeys))
        now = self._clock()
        results: dict[str, Served[M] | None] = {}
        previous: dict[str, Entry] = {}
        missing: list[str] = []
        for index, key in enumerate(wanted):
            entry = None if isinstance(raws, Down) else decode(raws[index], dt)
            if entry is not None and entry.is_fresh(now):
                if entry.not_found:
                    self._stats.record(dt, Outcome.NEGATIVE_HIT)
                    results[key] = None
                    continue
                value = parse(entry.payload, message_type)
                if value is not None:
                    self._stats.record(dt, Outcome.HIT)
                    results[key] = Served(
                        value, ServeStatus.SERVE_STATUS_CACHED, key, utc(entry.stored_at)
                    )
                    continue
                entry = None  # an undecodable payload is a miss
            self._stats.record(dt, Outcome.MISS)
            missing.append(key)
            if entry is not None and not entry.not_found:
                previous[key] = entry
        if missing:
            use_redis = not isinstance(raws, Down)
            results.update(
                await self._load(
                    missing, message_type, loader, policy, previous, use_redis=use_redis
                )
            )
        return {key: results[key] for key in wanted}

    async def _load(
        self,
        missing: list[str],
        message_type: type[M],
        loader: BulkLoader[M],
        policy: CachePolicy,
        previous: dict[str, Entry],
        *,
        use_redis: bool,
    ) -> dict[str, Served[M] | None]:
        dt = policy.data_type
        generation = self._generation()
        started = self._clock()
        try:
            found = await loader(missing)
        except Exception as exc:
            if isinstance(exc, RouterError) and not isinstance(exc, Unavailable):
                raise  # the store answered (InvalidArgument, ...): not cached
            self._stats.record(dt, Outcome.LOAD_ERROR)
            return self._stale(missing, message_type, previous, policy, exc)
        self._stats.record(dt, Outcome.LOAD)
        now = self._clock()
        results: dict[str, Served[M] | None] = {}
        blobs: list[tuple[str, bytes, int]] = []
        for key in missing:
            value = found.get(key)
            check_type(key, value, message_type)
            payload = None if value is None else value.SerializeToString()
            blob, ttl_ms = encode_answer(
                policy, payload, now=now, load_duration=now - started, rng=self._rng
            )
            blobs.append((self._keyspace.redis_key(key), blob, ttl_ms))
            fresh = ServeStatus.SERVE_STATUS_FRESH
            results[key] = None if value is None else Served(value, fresh, key, utc(now))
        if use_redis and self._generation() == generation:
            await self._guard.call("SET (pipeline)", missing[0], dt, lambda: self._store(blobs))
        return results

    async def _store(self, blobs: list[tuple[str, bytes, int]]) -> list[object]:
        async with self._guard.client.pipeline(transaction=False) as pipe:
            for rkey, blob, ttl_ms in blobs:
                pipe.set(rkey, blob, px=ttl_ms)
            replies: list[object] = await pipe.execute()
        return replies

    def _stale(
        self,
        missing: list[str],
        message_type: type[M],
        previous: dict[str, Entry],
        policy: CachePolicy,
        exc: Exception,
    ) -> dict[str, Served[M] | None]:
        """Serve kept stale copies after a store failure, or raise ``Unavailable``."""
        results: dict[str, Served[M] | None] = {}
        lacking: list[str] = []
        for key in missing:
            entry = previous.get(key)
            value = None if entry is None else parse(entry.payload, message_type)
            if entry is None or value is None:
                lacking.append(key)
                continue
            results[key] = Served(value, ServeStatus.SERVE_STATUS_STALE, key, utc(entry.stored_at))
        if lacking:
            raise unavailable(lacking, policy.data_type) from exc
        self._stats.record(policy.data_type, Outcome.STALE, len(results))
        return results
