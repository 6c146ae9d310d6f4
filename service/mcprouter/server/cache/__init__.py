"""The cache-aside core shared by every processor (see ``core.CacheAside``).

Processors compose it: they receive one ``CacheAside`` and describe how their
data type is cached with a ``CachePolicy``. Module map:

- ``core``: ``CacheAside``, the read path, invalidation and shutdown.
- ``loading``: one key's load under the cross-process lease, stale-if-error.
- ``invalidation``: removal from Redis (leases, then values, then the feed).
- ``guard``: the Redis boundary: timeouts, breaker, fail open.
- ``local``, ``feed``: the in-process L1 and the pub/sub invalidation feed
  that keeps it coherent across instances.
- ``policy``, ``envelope``, ``breaker``, ``single_flight``, ``served``: the parts.
"""

from mcprouter.server.cache.breaker import BreakerState, CircuitBreaker
from mcprouter.server.cache.core import CacheAside
from mcprouter.server.cache.envelope import SCHEMA_VERSION, Entry, decode, encode
from mcprouter.server.cache.local import LocalCache
from mcprouter.server.cache.policy import CachePolicy, xfetch_due
from mcprouter.server.cache.served import Loader, Served
from mcprouter.server.cache.single_flight import SingleFlight

__all__ = [
    "SCHEMA_VERSION",
    "BreakerState",
    "CacheAside",
    "CachePolicy",
    "CircuitBreaker",
    "Entry",
    "Loader",
    "LocalCache",
    "Served",
    "SingleFlight",
    "decode",
    "encode",
    "xfetch_due",
]
