"""Dedup records of event ids: *pending* while an insert is in flight, *done* after it.

One Redis string per event id, ``_dedup:{event_id}`` (an internal key):

    (absent) ──claim──▶ pending ──insert succeeded──▶ done  (value "1", DEDUP_TTL_S)
                          │ value: the claiming call's token, DEDUP_PENDING_TTL_S
                          └──insert failed──▶ (absent)   only if it still holds that token

What a ``track_events`` call sees, per request:

* every id absent or done: the absent ones are claimed (pending, this call's
  token) and sent to ClickHouse; the done ones, and repeats of an id earlier in
  the same request, are DUPLICATE;
* any id pending (another attempt, on any instance, is storing it): the
  request is UNAVAILABLE with reason ``EVENTS_IN_FLIGHT`` and the pending ids
  in the metadata, and *nothing* of it is claimed (all or nothing, one Lua
  script), so the client resends the same batch a moment later and gets a
  per-event answer. An id in flight is never DUPLICATE: its insert may fail.

A done record is written only after the insert carrying the event succeeded,
so DUPLICATE always means "stored". A failed insert releases the records that
still hold this call's token (compare-and-delete: a record another attempt
claimed after ours expired is left alone). Marking done and releasing are
follow-ups (``FollowUps``): if Redis fails right then, the answer is what
ClickHouse decided (STORED, or the insert's error) and the Redis write is
retried until Redis takes it, with a last try at shutdown. The calls whose
events one insert carried are marked done together, in one script call.

Why the pending TTL (``DEDUP_PENDING_TTL_S``, 90 s) and not the done TTL: a
process that crashes between claim and insert leaves a pending record that
nobody will ever complete; it blocks retries of those ids for at most the
pending TTL. It must outlast the longest a claimed event can take to be
inserted, or a retry could claim the id while the first insert is still
running. So the batcher must *start* the insert within ``insert_start_budget_s``
of the claim (the pending TTL minus the insert timeout
``CLICKHOUSE_INSERT_TIMEOUT_S`` minus ``MARK_MARGIN_S`` for the Redis round
trips), or it fails those events without inserting them (``EventBatcher``'s
``start_by``). With the defaults (90 s, 30 s) an event may wait 55 s for its
insert to start: normally it waits ``INGEST_MAX_DELAY_MS`` (15 ms), at worst
one insert already in progress (30 s). If that bound is ever broken anyway
(an in-process chDB insert has no timeout), a second copy may be inserted;
the ``ReplacingMergeTree`` keyed by event id collapses it and reads use
``FINAL``, so ClickHouse still counts it once (the open hour's real-time
counters in Redis could count it twice).

A process killed between its insert and the done mark leaves records pending
for events that *are* stored; once they expire a retry (on another instance)
would store a second copy. With an embedded engine that copy lands in another
instance's database, where ``FINAL`` cannot see both. So an instance with an
embedded engine settles them at start-up, before it serves (``settle_stored``,
run by ``EventTracker.settle_recent``): every event its engine received within
twice the pending TTL has its record made done, whatever state it is in (the
event is stored, so "done" is true). A restart within the pending TTL (the
supervisor's or the orchestrator's) therefore answers the retry DUPLICATE.

Size: a done record is the value ``"1"`` (as before the pending state
existed, so records written by older versions read as done); a pending one
holds an 8-character token for at most the pending TTL.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcprouter.server.cache import topology
from mcprouter.server.cache.guard import REDIS_ERRORS, GuardedRedis
from mcprouter.server.errors import CacheUnavailable, Unavailable
from mcprouter.server.followups import FollowUps
from mcprouter.server.keys import KeySpace

log = logging.getLogger(__name__)

DEDUP_FAMILY = "dedup"
DONE = b"1"
# Time kept back from the pending TTL for the claim's and the done mark's round trips.
MARK_MARGIN_S = 5.0
# How many pending ids an EVENTS_IN_FLIGHT error names (gRPC metadata is small).
NAMED_IN_ERROR = 20

# Codes per key returned by CLAIM_SCRIPT.
CLAIMED, IS_DONE, REPEAT, PENDING = 0, 1, 2, 3

# KEYS: one record per event of the request, in order. ARGV: token, pending TTL.
# One script, so the check and the claims are atomic and a request is claimed
# all or nothing. On a Redis Cluster it runs once per slot (records are tagged
# by event id) and claims made in other slots are released when any slot
# reports an id in flight, so the request is still claimed all or nothing.
CLAIM_SCRIPT = """
local out, seen, busy = {}, {}, false
for i, key in ipairs(KEYS) do
  if seen[key] then out[i] = 2
  else
    seen[key] = true
    local v = redis.call('GET', key)
    if not v then out[i] = 0
    elseif v == '1' then out[i] = 1
    else out[i] = 3; busy = true end
  end
end
if not busy then
  for i, key in ipairs(KEYS) do
    if out[i] == 0 then redis.call('SET', key, ARGV[1], 'EX', ARGV[2]) end
  end
end
return out
"""
# KEYS: records claimed by one or more calls. ARGV: the done TTL, then the
# token of each key's claim. A record that expired meanwhile is written too
# (the event is stored); one that another call claimed since is left to it.
DONE_SCRIPT = """
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v or v == ARGV[i + 1] then redis.call('SET', key, '1', 'EX', ARGV[1]) end
end
return #KEYS
"""
# KEYS: records of events the store holds. ARGV: the done TTL. Pending or
# absent ones become done (whoever claimed them: the event is stored).
SETTLE_SCRIPT = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) ~= '1' then redis.call('SET', key, '1', 'EX', ARGV[1]); n = n + 1 end
end
return n
"""
# Records per settle script call: a long script blocks every other Redis client.
SETTLE_CHUNK = 1000
# KEYS: the records a call claimed. ARGV: its token. Compare-and-delete.
RELEASE_SCRIPT = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key); n = n + 1 end
end
return n
"""


@dataclass(frozen=True, slots=True)
class DedupPolicy:
    """The TTLs of dedup records and the insert bound the pending TTL must cover."""

    done_ttl_s: int = 7 * 86_400
    pending_ttl_s: int = 90
    insert_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.insert_start_budget_s <= 0:
            raise ValueError(
                "the pending TTL must exceed the insert timeout by more than "
                f"{MARK_MARGIN_S:g} s (DEDUP_PENDING_TTL_S, CLICKHOUSE_INSERT_TIMEOUT_S)"
            )

    @property
    def insert_start_budget_s(self) -> float:
        """How long after the claim the insert carrying an event may still start."""
        return self.pending_ttl_s - self.insert_timeout_s - MARK_MARGIN_S


@dataclass(frozen=True, slots=True)
class Claim:
    """What one call claimed: its token, the new events and the insert's start deadline."""

    token: str
    is_new: list[bool]
    keys: list[str]
    start_by: float  # time.monotonic()


class DedupRecords:
    """Claims, completes and releases dedup records through the guarded Redis door."""

    def __init__(
        self,
        guard: GuardedRedis,
        keyspace: KeySpace,
        followups: FollowUps,
        policy: DedupPolicy,
    ) -> None:
        self._guard = guard
        self._keyspace = keyspace
        self._followups = followups
        self._policy = policy
        self._claim = guard.client.register_script(CLAIM_SCRIPT)
        self._done = guard.client.register_script(DONE_SCRIPT)
        self._release = guard.client.register_script(RELEASE_SCRIPT)
        self._settle = guard.client.register_script(SETTLE_SCRIPT)

    @property
    def policy(self) -> DedupPolicy:
        """The TTLs these records are written with."""
        return self._policy

    async def claim(self, event_ids: Sequence[str]) -> Claim:
        """Claim every new id of a request, or none.

        Raises:
            CacheUnavailable: Redis failed; nothing was claimed (dedup never fails open).
            Unavailable: ``EVENTS_IN_FLIGHT``: some ids are pending; nothing was claimed.
        """
        keys = [self._keyspace.internal(DEDUP_FAMILY, event_id) for event_id in event_ids]
        token = secrets.token_urlsafe(6)
        # Taken before the script runs: the record's TTL starts no earlier.
        start_by = time.monotonic() + self._policy.insert_start_budget_s
        groups = topology.slot_groups(self._guard.client, keys)
        try:
            replies = await self._per_slot(
                self._claim,
                [([keys[i] for i in g], [token, self._policy.pending_ttl_s]) for g in groups],
            )
        except REDIS_ERRORS as exc:
            with contextlib.suppress(*REDIS_ERRORS):  # else they expire with the pending TTL
                await self._undo(keys, token, groups)
            raise CacheUnavailable(
                "Redis failed, events cannot be deduplicated and were not stored: "
                f"{type(exc).__name__}: {exc}".rstrip(": "),
                metadata={"action": "dedup"},
            ) from exc
        codes = [0] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for index, code in zip(group, reply, strict=True):
                codes[index] = int(code)
        if len(groups) > 1 and PENDING in codes:
            await self._undo(keys, token, groups)  # all or nothing across slots too
        pending = [i for i, code in zip(event_ids, codes, strict=True) if code == PENDING]
        if pending:
            raise Unavailable(
                f"{len(pending)} of these events are being stored by an earlier attempt; "
                "nothing of this request was stored: resend it shortly "
                "(stored ones will then be answered DUPLICATE)",
                reason="EVENTS_IN_FLIGHT",
                metadata={
                    "event_ids": ",".join(pending[:NAMED_IN_ERROR]),
                    "in_flight": str(len(pending)),
                },
            )
        claimed = [key for key, code in zip(keys, codes, strict=True) if code == CLAIMED]
        return Claim(token, [code == CLAIMED for code in codes], claimed, start_by)

    async def _per_slot(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        client = self._guard.client
        return await self._guard.strict(lambda: topology.run_per_slot(client, script, calls))

    async def _undo(self, keys: list[str], token: str, groups: list[list[int]]) -> None:
        """Release what this token claimed in any slot (only on a cluster can that be partial)."""
        if len(groups) > 1:
            await self._run_grouped(self._release, keys, [token])

    async def _run_grouped(self, script: Any, keys: list[str], args: list[Any]) -> None:
        """One script call per slot group (one call on a single server)."""
        groups = topology.slot_groups(self._guard.client, keys)
        await self._per_slot(script, [([keys[i] for i in group], args) for group in groups])

    async def mark_done(self, claims: Sequence[Claim]) -> None:
        """Turn claims' records into done ones (one script call per slot).

        On a Redis failure the write is retried in the background.
        """
        keys = [key for claim in claims for key in claim.keys]
        if not keys:
            return
        tokens = [claim.token for claim in claims for _ in claim.keys]
        ttl = self._policy.done_ttl_s
        client = self._guard.client

        async def attempt() -> None:
            groups = topology.slot_groups(client, keys)
            calls = [([keys[i] for i in g], [ttl, *(tokens[i] for i in g)]) for g in groups]
            await self._per_slot(self._done, calls)

        first = next(claim.token for claim in claims if claim.keys)
        await self._followups.run(f"dedup done {first} ({len(keys)} events)", attempt)

    async def release(self, claim: Claim) -> None:
        """Remove a claim's records that still hold its token; retried like ``mark_done``."""
        if claim.keys:
            await self._followups.run(
                f"dedup release {claim.token} ({len(claim.keys)} events)",
                lambda: self._run_grouped(self._release, claim.keys, [claim.token]),
            )

    async def settle_stored(self, event_ids: Sequence[str]) -> int:
        """Make done the records of events the store is known to hold; how many changed.

        Raises:
            RedisError, OSError, TimeoutError: Redis failed; the caller retries.
        """
        settled = 0
        ttl = self._policy.done_ttl_s
        for start in range(0, len(event_ids), SETTLE_CHUNK):
            chunk = event_ids[start : start + SETTLE_CHUNK]
            keys = [self._keyspace.internal(DEDUP_FAMILY, event_id) for event_id in chunk]
            groups = topology.slot_groups(self._guard.client, keys)
            replies = await self._per_slot(
                self._settle, [([keys[i] for i in group], [ttl]) for group in groups]
            )
            settled += sum(int(reply) for reply in replies)
        return settled
