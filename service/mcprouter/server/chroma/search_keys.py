r"""Keys of cached semantic searches: the collection generation and the query digest.

A cached search lives at ``search:{collection}:{sha256 hex}``. The digest
covers a canonical serialisation of everything that decides the answer, and
the collection's *generation*: an integer kept in Redis at
``_gen:{collection}`` (under the namespace) that every write to the
collection increments. Bumping it changes the key of every future search of
the collection, so all cached searches become unreachable at once, on every
instance, without a SCAN; the old entries expire with their TTL (or are
removed by the ``Invalidate`` RPC to free memory sooner).

Canonical query bytes (format ``v1``), concatenated:

1. ``b"mcprouter.search.v1\x00"`` (a format tag, so a future format never
   collides with this one);
2. the collection name, UTF-8, then ``\x00`` (it cannot hold NUL);
3. the generation as an unsigned 64-bit big-endian integer;
4. ``k`` as an unsigned 32-bit big-endian integer;
5. the dimension as an unsigned 32-bit big-endian integer, then every
   component as an IEEE-754 float32, big-endian. The wire type is ``float``,
   so float32 is exact, not a rounding; ``-0.0`` is written as ``0.0``
   (same cosine distance to everything);
6. the filter as compact JSON with sorted keys (``b""`` without a filter):
   a sorted, de-duplicated list of conditions, each
   ``{"key": ..., "op": <enum number>, "values": [...]}`` where every value is
   tagged with its type (``{"s": "x"}``, ``{"i": 1}``, ``{"d": 1.0}``,
   ``{"b": true}``, so ``1`` and ``1.0`` and ``"1"`` differ) and the values of
   IN / NOT_IN are sorted and de-duplicated. Conditions are ANDed and IN is a
   set, so their order cannot change the answer and does not change the key.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence

from mcprouter.server import keys
from mcprouter.server.keys import KeySpace
from mcprouter.v1 import search_pb2 as search

FORMAT_TAG = b"mcprouter.search.v1\x00"
_LIST_OPERATORS = (search.FILTER_OPERATOR_IN, search.FILTER_OPERATOR_NOT_IN)


def generation_key(keyspace: KeySpace, collection: str) -> str:
    """The Redis key (namespace included) of a collection's search generation."""
    return keyspace.generation(collection)


def parse_generation(raw: bytes | str | int | None) -> int:
    """A generation as read from Redis; an absent key is generation 0."""
    return 0 if raw is None else int(raw)


def _tagged(value: search.MetadataValue) -> dict[str, object]:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return {"s": value.string_value}
    if kind == "int_value":
        return {"i": value.int_value}
    if kind == "double_value":
        return {"d": value.double_value}
    if kind == "bool_value":
        return {"b": value.bool_value}
    return {}


def _dumps(obj: object) -> str:
    # allow_nan=False: validation rejects NaN; a NaN reaching here is a bug.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _condition(cond: search.MetadataCondition) -> str:
    if cond.operator in _LIST_OPERATORS:
        # A set of operands: keyed by their canonical text, which also sorts them.
        by_text = {_dumps(tagged): tagged for tagged in map(_tagged, cond.values)}
        values = [by_text[text] for text in sorted(by_text)]
    else:
        values = [_tagged(cond.value)]
    return _dumps({"key": cond.key, "op": int(cond.operator), "values": values})


def canonical_filter(flt: search.MetadataFilter | None) -> bytes:
    """The canonical JSON bytes of a filter (``b""`` for no filter)."""
    if flt is None or not flt.conditions:
        return b""
    conditions = sorted({_condition(cond) for cond in flt.conditions})
    return ("[" + ",".join(conditions) + "]").encode()


def canonical_query(
    collection: str,
    generation: int,
    embedding: Sequence[float],
    k: int,
    flt: search.MetadataFilter | None,
) -> bytes:
    """The canonical bytes of one search (see the module docstring for the format)."""
    # x + 0.0 turns -0.0 into 0.0 and leaves every other float unchanged.
    components = [x + 0.0 for x in embedding]
    return b"".join(
        (
            FORMAT_TAG,
            collection.encode() + b"\x00",
            struct.pack(">QII", generation, k, len(components)),
            struct.pack(f">{len(components)}f", *components),
            canonical_filter(flt),
        )
    )


def query_digest(
    collection: str,
    generation: int,
    embedding: Sequence[float],
    k: int,
    flt: search.MetadataFilter | None,
) -> str:
    """The hex sha256 of the canonical query."""
    return hashlib.sha256(canonical_query(collection, generation, embedding, k, flt)).hexdigest()


def search_cache_key(
    collection: str,
    generation: int,
    embedding: Sequence[float],
    k: int,
    flt: search.MetadataFilter | None,
) -> str:
    """The client-visible cache key of one search."""
    return keys.search_key(collection, query_digest(collection, generation, embedding, k, flt))
