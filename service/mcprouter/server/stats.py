"""In-process counters for every cache outcome; they feed the Stats RPC.

Counters are per server process and start at zero on start-up (``started_at``
says when). They are plain integers: the server runs one event loop, so
increments need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from mcprouter.v1.serve_status_pb2 import DataType


class Outcome(StrEnum):
    """What happened to one cached read (or one step of it)."""

    HIT = "hits"
    MISS = "misses"
    STALE = "stale"
    NEGATIVE_HIT = "negative_hits"
    LOAD = "loads"
    LOAD_ERROR = "load_errors"
    REDIS_ERROR = "errors"
    EARLY_REFRESH = "early_refreshes"
    LEASE_WAIT = "lease_waits"
    # A HIT served from this process's memory (L1), without a Redis round trip.
    LOCAL_HIT = "local_hits"


# Outcomes that answered a read without a store query.
_AVOIDED = (Outcome.HIT, Outcome.NEGATIVE_HIT, Outcome.STALE)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent copy of the counters."""

    started_at: datetime
    total_operations: int
    per_type: dict[DataType.ValueType, dict[Outcome, int]]
    dedup_hits: int
    invalidations: int
    redis_errors: int

    @property
    def store_queries_avoided(self) -> int:
        """Reads answered from the cache (fresh, negative or stale)."""
        return sum(counts.get(o, 0) for counts in self.per_type.values() for o in _AVOIDED)

    @property
    def hit_rate(self) -> float:
        """Share of cached reads answered without a store query; 0 with none."""
        # STALE answers are a subset of MISS (no fresh entry, then the store failed).
        reads = sum(
            counts.get(o, 0)
            for counts in self.per_type.values()
            for o in (Outcome.HIT, Outcome.NEGATIVE_HIT, Outcome.MISS)
        )
        return self.store_queries_avoided / reads if reads else 0.0


@dataclass
class CacheStats:
    """Mutable counters; one instance per server, passed to whoever records."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    total_operations: int = 0
    dedup_hits: int = 0
    invalidations: int = 0
    redis_errors: int = 0
    _per_type: dict[DataType.ValueType, Counter[Outcome]] = field(default_factory=dict)

    def record(self, data_type: DataType.ValueType, outcome: Outcome, count: int = 1) -> None:
        """Count ``count`` occurrences of ``outcome`` for ``data_type``."""
        self._per_type.setdefault(data_type, Counter())[outcome] += count
        if outcome is Outcome.REDIS_ERROR:
            self.redis_errors += count

    def operation(self) -> None:
        """Count one RPC that touched the data path."""
        self.total_operations += 1

    def dedup_hit(self, count: int = 1) -> None:
        """Count events rejected as duplicates."""
        self.dedup_hits += count

    def invalidated(self, count: int) -> None:
        """Count keys removed from the cache."""
        self.invalidations += count

    def redis_error(self) -> None:
        """Count a Redis failure not tied to one data type."""
        self.redis_errors += 1

    def snapshot(self) -> StatsSnapshot:
        """Copy the counters."""
        return StatsSnapshot(
            started_at=self.started_at,
            total_operations=self.total_operations,
            per_type={t: dict(c) for t, c in self._per_type.items()},
            dedup_hits=self.dedup_hits,
            invalidations=self.invalidations,
            redis_errors=self.redis_errors,
        )
