"""How the parts are put together: the one place, used by the app, the tests and the benches.

``app.open_app`` opens the resources (servers, clients, pools) from
``Settings`` and calls these functions; tests and benchmarks call the same
functions on the resources they opened, so no composition is written twice.
Nothing here opens or closes anything: whoever opened a resource closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mcprouter.server.cache import CacheAside, CircuitBreaker, LocalCache
from mcprouter.server.cache.feed import PING_INTERVAL_S
from mcprouter.server.cache.guard import GuardedRedis
from mcprouter.server.cache.topology import RedisClient
from mcprouter.server.clickhouse.dedup import DedupPolicy
from mcprouter.server.clickhouse.ingest import EventBatcher
from mcprouter.server.clickhouse.processor import (
    ClickHousePolicies,
    ClickHouseProcessor,
    ExperimentLookup,
)
from mcprouter.server.clickhouse.store import ClickHouseStore
from mcprouter.server.clickhouse.tracking import EventTracker
from mcprouter.server.keys import KeySpace
from mcprouter.server.stats import CacheStats
from mcprouter.v1.events_pb2 import Event

DEFAULT_REDIS_TIMEOUT_S = 0.25


@dataclass(frozen=True)
class Core:
    """What the processors share: the cache core and the guarded door of each Redis role.

    Attributes:
        cache: The cache-aside core; ``cache.guard`` is the cache role's door.
        state: The state role's door (dedup records, counters, generations):
            its own client and breaker when the state role is another server,
            else the cache's door.
        keyspace: The namespace of every key.
        stats: Where every outcome is counted.
    """

    cache: CacheAside
    state: GuardedRedis
    keyspace: KeySpace
    stats: CacheStats


def cache_core(
    redis: RedisClient,
    keyspace: KeySpace,
    stats: CacheStats,
    *,
    state_redis: RedisClient | None = None,
    breaker: CircuitBreaker | None = None,
    state_breaker: CircuitBreaker | None = None,
    local: LocalCache | None = None,
    redis_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
    feed_ping_interval_s: float = PING_INTERVAL_S,
    clock: Callable[[], float] = time.time,
) -> Core:
    """The cache core over ``redis`` and the state door over ``state_redis`` (or ``redis``).

    The caller starts the core (``core.cache.start()``) and closes it
    (``await core.cache.aclose()``); the clients stay the caller's.
    """
    cache = CacheAside(
        redis,
        keyspace,
        stats,
        breaker or CircuitBreaker(),
        clock=clock,
        redis_timeout=redis_timeout_s,
        local=local,
        feed_ping_interval_s=feed_ping_interval_s,
    )
    if state_redis is None or state_redis is redis:
        state = cache.guard
    else:
        # Its own breaker: a state-Redis outage must not stop cache reads.
        state = GuardedRedis(state_redis, state_breaker or CircuitBreaker(), stats, redis_timeout_s)
    return Core(cache, state, keyspace, stats)


def clickhouse_processor(
    core: Core,
    store: ClickHouseStore,
    batcher: EventBatcher[Event],
    *,
    policies: ClickHousePolicies,
    experiments: ExperimentLookup,
    dedup_policy: DedupPolicy | None = None,
    ingestion_lag_s: float = 300.0,
    clock: Callable[[], float] = time.time,
) -> ClickHouseProcessor:
    """The ClickHouse processor and the event tracker it owns."""
    tracker = EventTracker(
        batcher,
        core.cache,
        core.state,
        keyspace=core.keyspace,
        stats=core.stats,
        clock=clock,
        dedup_policy=dedup_policy,
        ingestion_lag_s=ingestion_lag_s,
    )
    return ClickHouseProcessor(
        store,
        tracker,
        core.cache,
        policies=policies,
        experiments=experiments,
        clock=clock,
        ingestion_lag_s=ingestion_lag_s,
    )
