"""A small in-process cache (L1) in front of Redis, kept coherent by invalidation.

A hot key read from Redis on every request costs a Redis round trip and the
client library's CPU, which on a local network is as much as the store query
it saves. The L1 keeps recently read *fresh* entries in memory for at most
``max_age`` seconds (never past their own freshness), and drops them when any
instance invalidates them: every invalidation is published on a Redis channel
(``feed.py``) and applied here.

Coherence rules:

- The L1 serves only while the invalidation feed is connected; on (re)connect
  it starts empty, since messages may have been missed.
- Every applied invalidation bumps ``generation``; a value read from Redis is
  admitted only if no invalidation was applied since the read began, so a
  message that overtakes the GET reply cannot leave the old value behind.
- ``max_age`` bounds staleness should a message ever be lost.

Memory is bounded by bytes as well as entries: one search result can be a
thousand times the size of an experiment, so a count alone would let a few
thousand large entries take gigabytes. An entry's size is its serialized
size (``ByteSize()``, computed once on admission) plus a fixed overhead for
the key, the entry and the dict slot; an entry larger than an eighth of the
budget is not admitted at all.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

# Python objects around each value: the key string, the entry, the dict slot.
ENTRY_OVERHEAD_BYTES = 256
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """One L1 entry: the value (``None`` caches "not found") and its times."""

    value: Message | None
    stored_at: float
    expires_at: float
    size: int


class LocalCache:
    """Bounded LRU of fresh values; disabled until the feed says it is coherent."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_age: float,
        clock: Callable[[], float],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._entries: OrderedDict[str, LocalEntry] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._clock = clock
        self._coherent = False
        self.bytes = 0
        self.generation = 0

    @property
    def configured(self) -> bool:
        """Whether this L1 may hold anything at all."""
        return self._max_entries > 0 and self._max_age > 0 and self._max_bytes > 0

    @property
    def active(self) -> bool:
        """Whether the L1 may serve (configured and its feed connected)."""
        return self._coherent and self.configured

    def set_coherent(self, coherent: bool) -> None:
        """Called by the feed: on every change the L1 starts empty."""
        self._coherent = coherent
        self.clear()

    def get(self, key: str) -> LocalEntry | None:
        """The entry of ``key`` if the L1 is active and it has not expired."""
        if not self._coherent:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: str,
        value: Message | None,
        *,
        stored_at: float,
        fresh_until: float,
        generation: int,
    ) -> None:
        """Admit a fresh value read when ``generation`` was current."""
        if not self.active or generation != self.generation:
            return
        size = ENTRY_OVERHEAD_BYTES + len(key) + (0 if value is None else value.ByteSize())
        if size > self._max_bytes // 8:
            return
        expires_at = min(fresh_until, self._clock() + self._max_age)
        self._remove(key)
        self._entries[key] = LocalEntry(value, stored_at, expires_at, size)
        self.bytes += size
        while len(self._entries) > self._max_entries or self.bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def drop(self, keys: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        """Apply an invalidation: exact keys and Redis-style glob patterns."""
        self.generation += 1
        for key in keys:
            self._remove(key)
        globs = list(patterns)
        if globs:
            # Our patterns use only * ? [ ] over [A-Za-z0-9_.:-], where
            # fnmatchcase and Redis MATCH agree.
            for key in [k for k in self._entries if any(fnmatch.fnmatchcase(k, g) for g in globs)]:
                self._remove(key)

    def clear(self) -> None:
        """Forget everything."""
        self.generation += 1
        self._entries.clear()
        self.bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)
