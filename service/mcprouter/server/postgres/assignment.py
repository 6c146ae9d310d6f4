"""Deterministic experiment assignment: ``(salt, user_id) -> bucket -> variant``.

Pure functions, no I/O. Every process and every client language must reproduce
exactly the same answers; ``spec/assignment_test_vectors.json`` at the repository
root publishes cases to check an implementation against.

Bucket::

    digest = SHA-256( UTF-8( salt + ":" + user_id ) )
    bucket = uint64_big_endian( digest[0:8] ) mod 10000

i.e. the first 8 bytes of the digest read as an unsigned big-endian 64-bit
integer, modulo ``BUCKETS`` (10000). ``salt`` is the experiment's server-made
salt; ``user_id`` is the raw id (ids are ASCII by validation, so UTF-8 is the
identity on them). The bias of ``2**64 mod 10000`` is ~1e-15 and ignored.

Variant (integer arithmetic only, no floating point)::

    total  = w[0] + ... + w[n-1]
    cum_i  = w[0] + ... + w[i]                       (cum_-1 = 0)
    lower_i = floor(10000 * cum_{i-1} / total)
    upper_i = floor(10000 * cum_i / total)
    variant i owns buckets [lower_i, upper_i)

so the chosen variant is the first ``i`` (in the experiment's variant order)
with ``bucket < floor(10000 * cum_i / total)``. ``upper_{n-1}`` is always
10000, so every bucket maps to exactly one variant.

Weights are integers in ``1..10000`` (the contract's range); weight 0 is
rejected rather than meaning "off", because a variant that takes no traffic
should be removed or the experiment paused. With the bounds above
``10000 * cum_i`` stays far below 2**63, so 64-bit signed integers suffice in
any language. The resolution is one bucket (0.01%): when the total weight
exceeds 10000, a variant whose share is below 1/10000 may own no bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000
MIN_WEIGHT = 1
MAX_WEIGHT = 10_000


def bucket_of(salt: str, user_id: str) -> int:
    """The user's bucket in ``0..BUCKETS-1`` for an experiment's salt.

    Args:
        salt: The experiment's salt.
        user_id: The user's id.

    Returns:
        ``uint64_be(sha256(f"{salt}:{user_id}")[:8]) % 10000``.
    """
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def bucket_bounds(weights: Sequence[int]) -> list[int]:
    """The exclusive upper bucket bound of each variant, in order.

    Args:
        weights: The variants' weights, each in ``MIN_WEIGHT..MAX_WEIGHT``.

    Returns:
        ``floor(BUCKETS * cum_i / total)`` for each ``i``; the last is ``BUCKETS``.

    Raises:
        ValueError: No weights, or a weight outside ``MIN_WEIGHT..MAX_WEIGHT``.
    """
    if not weights:
        raise ValueError("an experiment needs at least one variant")
    for weight in weights:
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be in {MIN_WEIGHT}..{MAX_WEIGHT}, got {weight}")
    total = sum(weights)
    bounds: list[int] = []
    cumulative = 0
    for weight in weights:
        cumulative += weight
        bounds.append(BUCKETS * cumulative // total)
    return bounds


def choose_variant(bucket: int, variants: Sequence[tuple[str, int]]) -> str:
    """Map a bucket to a variant by cumulative weights (see the module docstring).

    Args:
        bucket: A bucket in ``0..BUCKETS-1``.
        variants: ``(name, weight)`` pairs in the experiment's order.

    Returns:
        The name of the variant owning ``bucket``.

    Raises:
        ValueError: The bucket is out of range, or the weights are invalid.
    """
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"bucket must be in 0..{BUCKETS - 1}, got {bucket}")
    bounds = bucket_bounds([weight for _, weight in variants])
    for (name, _), upper in zip(variants, bounds, strict=True):
        if bucket < upper:
            return name
    # Unreachable: the last bound is BUCKETS.
    raise AssertionError("bucket beyond the last variant")


def assign(salt: str, user_id: str, variants: Sequence[tuple[str, int]]) -> tuple[int, str]:
    """Bucket and variant of a user in an experiment, in one call.

    Args:
        salt: The experiment's salt.
        user_id: The user's id.
        variants: ``(name, weight)`` pairs in the experiment's order.

    Returns:
        ``(bucket, variant name)``.
    """
    bucket = bucket_of(salt, user_id)
    return bucket, choose_variant(bucket, variants)
