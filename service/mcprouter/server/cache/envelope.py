"""Encode and decode the ``CacheEnvelope`` stored in Redis for every cached value.

The envelope is a protobuf so a client in any language can read the cache.
Decoding is deliberately forgiving: bytes this version cannot trust (garbage,
an unknown ``schema_version``, another data type) decode to ``None`` and the
caller treats them as a miss, so the next load overwrites them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from mcprouter.server.cache.policy import CachePolicy
from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope
from mcprouter.v1.serve_status_pb2 import DataType

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded envelope, with times as epoch seconds.

    Attributes:
        payload: The serialized value message; empty for a "not found" entry.
        not_found: Whether this entry caches "the store has no such value".
        stored_at: When the value was loaded from its store.
        fresh_until: When the value stops being fresh.
        load_duration: How long the store took to produce the value, in seconds.
    """

    payload: bytes
    not_found: bool
    stored_at: float
    fresh_until: float
    load_duration: float

    def is_fresh(self, now: float) -> bool:
        """Whether the entry may be served as ``CACHED`` at ``now``."""
        return now < self.fresh_until


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return duration


def encode(
    data_type: DataType.ValueType,
    payload: bytes | None,
    *,
    stored_at: float,
    fresh_until: float,
    load_duration: float,
) -> bytes:
    """Serialize one cache entry.

    Args:
        data_type: The family of the value.
        payload: The serialized value, or ``None`` for a "not found" entry.
        stored_at: When the value was loaded, in epoch seconds.
        fresh_until: When the value stops being fresh, in epoch seconds.
        load_duration: How long the load took, in seconds.

    Returns:
        The bytes to store in Redis.
    """
    envelope = CacheEnvelope(
        data_type=data_type,
        payload=payload or b"",
        not_found=payload is None,
        stored_at=_timestamp(stored_at),
        fresh_until=_timestamp(fresh_until),
        schema_version=SCHEMA_VERSION,
        load_duration=_duration(load_duration),
    )
    return envelope.SerializeToString()


def decode(raw: bytes | str | None, data_type: DataType.ValueType) -> Entry | None:
    """Parse stored bytes, or return ``None`` when they cannot be trusted.

    Args:
        raw: What Redis returned (``None`` for a missing key).
        data_type: The family the caller expects.

    Returns:
        The entry, or ``None`` for a missing key, undecodable bytes, an unknown
        schema version, a missing ``fresh_until`` or another data type.
    """
    if not isinstance(raw, bytes):
        # None is a plain miss; str means a client with decode_responses=True,
        # which cannot carry protobuf bytes intact.
        return None
    try:
        envelope = CacheEnvelope.FromString(raw)
    except DecodeError:
        return None
    if (
        envelope.schema_version != SCHEMA_VERSION
        or envelope.data_type != data_type
        or not envelope.HasField("fresh_until")
    ):
        return None
    return Entry(
        payload=envelope.payload,
        not_found=envelope.not_found,
        stored_at=envelope.stored_at.ToNanoseconds() / 1e9,
        fresh_until=envelope.fresh_until.ToNanoseconds() / 1e9,
        load_duration=envelope.load_duration.ToNanoseconds() / 1e9,
    )


def encode_answer(
    policy: CachePolicy,
    payload: bytes | None,
    *,
    now: float,
    load_duration: float,
    rng: random.Random,
) -> tuple[bytes, int, float]:
    """Envelope, Redis TTL (ms) and fresh-until time of a fresh load answer.

    A value is fresh for the jittered ``fresh_ttl`` and kept ``stale_ttl``
    longer; "not found" (``payload is None``) is kept only ``negative_ttl``.
    """
    if payload is None:
        fresh, ttl_ms = policy.negative_ttl, policy.negative_ttl_ms()
    else:
        fresh = policy.fresh_seconds(rng)
        ttl_ms = policy.entry_ttl_ms(fresh)
    blob = encode(
        policy.data_type,
        payload,
        stored_at=now,
        fresh_until=now + fresh,
        load_duration=load_duration,
    )
    return blob, ttl_ms, now + fresh
