"""How one data type is cached: TTLs, jitter, leases and early refresh, as data.

Processors differ only in a ``CachePolicy``; the arithmetic that turns a policy
into Redis TTLs and early-refresh decisions lives here as pure functions so
unit tests can drive it with a fixed random source and clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from mcprouter.v1.serve_status_pb2 import DataType


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Caching parameters of one data type.

    Attributes:
        data_type: The family of values cached under this policy.
        fresh_ttl: Seconds an entry is fresh (served as ``CACHED``).
        stale_ttl: Extra seconds an entry is kept after it stops being fresh;
            it is served then only as ``STALE`` when the store fails.
        negative_ttl: Seconds a "not found" answer is cached.
        jitter: Fraction by which the fresh time is stretched at random
            (``fresh_ttl * uniform(1, 1 + jitter)``), so entries written together
            do not expire together.
        lease_ttl_ms: Lifetime of the cross-process load lease (``SET NX PX``).
        lease_wait_ms: How long a caller that lost the lease polls for the value
            before loading it itself.
        xfetch_beta: Eagerness of probabilistic early refresh; 0 disables it.

        enabled: ``False`` sends every read straight to the store and caches
            nothing (for benchmarks and debugging).
    """

    data_type: DataType.ValueType
    fresh_ttl: float
    stale_ttl: float = 3600.0
    negative_ttl: float = 30.0
    jitter: float = 0.1
    lease_ttl_ms: int = 2000
    lease_wait_ms: int = 300
    xfetch_beta: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        # A bad policy is a programming error: fail at start-up, not per request.
        problems: list[str] = []
        for name in ("fresh_ttl", "negative_ttl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("stale_ttl", "jitter", "xfetch_beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lease_ttl_ms <= 0:
            problems.append(f"lease_ttl_ms must be > 0, got {self.lease_ttl_ms!r}")
        if self.lease_wait_ms < 0:
            problems.append(f"lease_wait_ms must be >= 0, got {self.lease_wait_ms!r}")
        if self.data_type == DataType.DATA_TYPE_UNSPECIFIED:
            problems.append("data_type must not be DATA_TYPE_UNSPECIFIED")
        if problems:
            raise ValueError("invalid CachePolicy: " + "; ".join(problems))

    def fresh_seconds(self, rng: random.Random) -> float:
        """Draw the jittered fresh time of one entry."""
        return self.fresh_ttl * rng.uniform(1.0, 1.0 + self.jitter)

    def entry_ttl_ms(self, fresh_seconds: float) -> int:
        """Redis TTL of an entry: its fresh time plus the stale window."""
        # Round up so the key never expires before fresh_until.
        return max(1, math.ceil((fresh_seconds + self.stale_ttl) * 1000))

    def negative_ttl_ms(self) -> int:
        """Redis TTL of a "not found" entry."""
        return max(1, math.ceil(self.negative_ttl * 1000))


def xfetch_due(
    *, now: float, fresh_until: float, load_duration: float, beta: float, rng: random.Random
) -> bool:
    """Decide whether a fresh entry should be refreshed early (XFetch).

    Implements Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic
    Cache Stampede Prevention" (VLDB 2015): refresh when
    ``now - load_duration * beta * ln(u) >= fresh_until`` with ``u`` uniform in
    [0, 1). Since ``-ln(u)`` is exponentially distributed, the chance of an early
    refresh grows as expiry nears, and sooner for values that are slow to load.

    Args:
        now: The current time, in seconds.
        fresh_until: When the entry stops being fresh, in seconds.
        load_duration: How long the store took to produce the value, in seconds.
        beta: Eagerness; 0 never refreshes early, > 1 favours earlier refreshes.
        rng: The random source (injected so tests can fix it).

    Returns:
        Whether this caller should start a refresh.
    """
    if beta <= 0 or now >= fresh_until:
        # Past fresh_until is a miss, not an early refresh.
        return False
    u = rng.random()
    if u <= 0.0:
        # ln(0) is -inf: the gap is unbounded, so refresh.
        return True
    return now - max(load_duration, 0.0) * beta * math.log(u) >= fresh_until
