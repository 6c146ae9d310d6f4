"""Real-time hourly counters in Redis: the view of hours still being written.

For every experiment, variant, metric (event type) and UTC hour of the
event's timestamp, Redis holds

* a hash ``_rt:{exp}:{variant}:{metric}:{YYYYMMDDHH}`` with ``count`` (HINCRBY)
  and ``sum`` (HINCRBYFLOAT), and
* a HyperLogLog ``_rt:{exp}:{variant}:{metric}:{YYYYMMDDHH}:users`` (PFADD), so
  unique users cost 12 KB at most per key and are within about 0.8%.

They are internal keys (clients can neither read nor invalidate them) and
expire ``ttl_s`` after their last update: long enough to outlive the hour
and its ingestion lag, after which hours are read from ClickHouse.

Counters are updated only after ClickHouse acknowledged the events, once
per request, aggregated per key, by one Lua script call: atomic (a reader
never sees a count without its sum), and one command instead of five per
key, because redis-py's per-command CPU cost dominated batch ingestion.

Every call goes through the cache's guarded Redis door (``GuardedRedis.call``:
the caller's deadline, the Redis timeout, the circuit breaker, the error
counters) and fails open: while Redis is down a read answers ``None`` (the
processor asks ClickHouse instead) and an update is skipped. An update is not
retried: HINCRBY is not idempotent (a timed-out call may have been applied),
and the counters are only the open hour's approximate view; ClickHouse, which
closed hours are read from, has every stored event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mcprouter.server.cache import topology
from mcprouter.server.cache.guard import Down, GuardedRedis
from mcprouter.server.keys import KeySpace
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.serve_status_pb2 import DataType

DEFAULT_TTL_S = 2 * 86_400
_METRICS = DataType.DATA_TYPE_EVENT_METRICS
# KEYS: hash, hll, hash, hll, ...; ARGV: ttl, then per key pair:
# count, sum, number of users, the users.
RECORD_SCRIPT = """
local ttl = ARGV[1]
local a = 2
for k = 1, #KEYS, 2 do
  local h, u, n = KEYS[k], KEYS[k + 1], tonumber(ARGV[a + 2])
  redis.call('HINCRBY', h, 'count', ARGV[a])
  redis.call('HINCRBYFLOAT', h, 'sum', ARGV[a + 1])
  if n > 0 then redis.call('PFADD', u, unpack(ARGV, a + 3, a + 2 + n)) end
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', u, ttl)
  a = a + 3 + n
end
return #KEYS / 2
"""


@dataclass(slots=True)
class _Group:
    count: int = 0
    total: float = 0.0
    users: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class HourFigures:
    """What the counters say about one hour."""

    count: int
    sum: float
    unique_users: int


def hour_start(event: Event) -> int:
    """Epoch seconds of the start of the UTC hour an event belongs to."""
    seconds = event.timestamp.seconds
    return seconds - seconds % 3600


# KEYS: the hour's hash and its HyperLogLog. Count and sum as strings (sum is a float).
READ_SCRIPT = """
local figures = redis.call('HMGET', KEYS[1], 'count', 'sum')
return {figures[1] or '0', figures[2] or '0', redis.call('PFCOUNT', KEYS[2])}
"""


class RealtimeCounters:
    """Per-hour count, value sum and unique users, kept in Redis."""

    def __init__(
        self, guard: GuardedRedis, keyspace: KeySpace, *, ttl_s: int = DEFAULT_TTL_S
    ) -> None:
        self._guard = guard
        self._keyspace = keyspace
        self._ttl_s = ttl_s
        self._record_script = guard.client.register_script(RECORD_SCRIPT)
        self._read_script = guard.client.register_script(READ_SCRIPT)

    def _hash_key(self, experiment_id: str, variant: str, metric: str, hour: datetime) -> str:
        return self._keyspace.internal("rt", experiment_id, variant, metric, f"{hour:%Y%m%d%H}")

    async def record(self, events: Sequence[Event]) -> bool:
        """Add stored events to their hours' counters (one script call).

        Returns:
            False when Redis was skipped or failed (logged and counted by the
            guard); some counters may then be updated.
        """
        # Grouped by epoch hour (an int): no datetime per event, one per group.
        groups: dict[tuple[str, str, str, int], _Group] = {}
        for event in events:
            key = (event.experiment_id, event.variant, event.event_type, hour_start(event))
            group = groups.setdefault(key, _Group())
            group.count += 1
            group.total += event.value
            group.users.add(event.user_id)
        # One script call per slot group: the hash and the HLL of an hour share
        # the experiment's tag; on a cluster, experiments may live in other slots.
        entries: list[tuple[str, list[str | int]]] = []
        for (exp, variant, metric, hour), group in groups.items():
            hkey = self._hash_key(exp, variant, metric, datetime.fromtimestamp(hour, UTC))
            entries.append((hkey, [group.count, repr(group.total), len(group.users), *group.users]))
        if not entries:
            return True
        calls: list[tuple[list[str], list[Any]]] = []
        for indices in topology.slot_groups(self._guard.client, [hkey for hkey, _ in entries]):
            redis_keys: list[str] = []
            args: list[Any] = [self._ttl_s]
            for hkey, values in (entries[i] for i in indices):
                redis_keys += [hkey, f"{hkey}:users"]
                args += values
            calls.append((redis_keys, args))
        client, script = self._guard.client, self._record_script
        reply = await self._guard.call(
            "counters update",
            calls[0][0][0],
            _METRICS,
            lambda: topology.run_per_slot(client, script, calls),
        )
        return not isinstance(reply, Down)

    async def read(
        self, experiment_id: str, variant: str, metric: str, hour: datetime
    ) -> HourFigures | None:
        """The counters of one hour (zeros when nothing was counted); None if Redis is down."""
        hkey = self._hash_key(experiment_id, variant, metric, hour)

        async def fetch() -> HourFigures:
            # One script: the hash and the HLL share a slot, and a cluster
            # pipeline refuses PFCOUNT.
            count, total, users = await self._read_script(keys=[hkey, f"{hkey}:users"], args=[])
            return HourFigures(
                count=int(count or 0), sum=float(total or 0.0), unique_users=int(users or 0)
            )

        reply = await self._guard.call("counters read", hkey, _METRICS, fetch)
        return None if isinstance(reply, Down) else reply
