"""Cache key layout: one family per data type, built only from validated ids.

Every key a client sees (``cache_key``, ``GetCached``, ``Invalidate``) is
relative to the server's namespace prefix; ``KeySpace`` adds and strips the
prefix at the Redis boundary, in one place.

| family       | key                                                     |
|--------------|---------------------------------------------------------|
| experiment   | ``experiment:{experiment_id}``                          |
| assignment   | ``assignment:{experiment_id}:{user_id}``                |
| user         | ``user:{user_id}:profile``                              |
| metrics      | ``metrics:{experiment_id}:{variant}:{metric}:{YYYYMMDDHH}`` |
| analytics    | ``analytics:{experiment_id}:{YYYYMMDD}``                |
| search       | ``search:{collection}:{sha256 of the query}``           |

Internal keys (dedup markers, leases, counters) live in families clients can
neither read nor invalidate.

**In Redis** every key carries a hash tag, the same on a single server and
on a Redis Cluster: the entity segment (the one after the family) is wrapped
in braces, so ``experiment:exp_123`` is stored as ``experiment:{exp_123}``
and ``metrics:e1:v:m:2026112910`` as ``metrics:{e1}:v:m:2026112910``. The
keys one script or pipeline touches together share that tag and so one
cluster slot: a value and its lease (``_lease:experiment:{exp_123}``), an
experiment's derived keys and their index (``_idx:metrics:{e1}``), an hour's
counter hash and its HyperLogLog (``_rt:{e1}:...``). Clients never see the
braces: ``KeySpace`` adds them (and the namespace) at the Redis boundary and
removes them on the way back.
"""

from __future__ import annotations

import re
from datetime import datetime

from mcprouter.v1.serve_status_pb2 import DataType

PUBLIC_FAMILIES: dict[str, DataType.ValueType] = {
    "experiment": DataType.DATA_TYPE_EXPERIMENT,
    "assignment": DataType.DATA_TYPE_ASSIGNMENT,
    "user": DataType.DATA_TYPE_USER_PROFILE,
    "metrics": DataType.DATA_TYPE_EVENT_METRICS,
    "analytics": DataType.DATA_TYPE_ANALYTICS,
    "search": DataType.DATA_TYPE_SEARCH,
}
FAMILY_OF_TYPE: dict[DataType.ValueType, str] = {v: k for k, v in PUBLIC_FAMILIES.items()}

KEY_MAX_LENGTH = 512
PATTERN_MAX_LENGTH = 256
PATTERN_MAX_WILDCARDS = 8
# A concrete key: a family, then ':'-separated identifier segments.
_KEY_RE = re.compile(r"(?P<family>[a-z]+)(:[A-Za-z0-9_.\-]+)+")
# A pattern: a literal family prefix, then segments that may hold globs.
_PATTERN_RE = re.compile(r"(?P<family>[a-z]+):[A-Za-z0-9_.\-:*?\[\]]*")
NAMESPACE_RE = re.compile(r"([A-Za-z0-9_.\-]{1,64}:)?")


def experiment_key(experiment_id: str) -> str:
    """Key of an experiment."""
    return f"experiment:{experiment_id}"


def assignment_key(experiment_id: str, user_id: str) -> str:
    """Key of a user's assignment in an experiment."""
    return f"assignment:{experiment_id}:{user_id}"


def user_profile_key(user_id: str) -> str:
    """Key of a user profile."""
    return f"user:{user_id}:profile"


def event_metrics_key(experiment_id: str, variant: str, metric: str, hour: datetime) -> str:
    """Key of one metric of one variant for one UTC hour."""
    return f"metrics:{experiment_id}:{variant}:{metric}:{hour:%Y%m%d%H}"


def analytics_key(experiment_id: str, day: datetime) -> str:
    """Key of one experiment's analytics for one UTC day."""
    return f"analytics:{experiment_id}:{day:%Y%m%d}"


def search_key(collection: str, query_digest: str) -> str:
    """Key of one cached search (the digest is a hex sha256)."""
    return f"search:{collection}:{query_digest}"


def experiment_patterns(experiment_id: str) -> list[str]:
    """Patterns of everything derived from an experiment, besides its own key."""
    return [
        f"assignment:{experiment_id}:*",
        f"metrics:{experiment_id}:*",
        f"analytics:{experiment_id}:*",
    ]


def user_patterns(user_id: str) -> list[str]:
    """Patterns of everything derived from a user, besides the profile key."""
    return [f"assignment:*:{user_id}"]


# Families derived from an experiment that its writes remove: each of their
# keys is recorded in a per-experiment index set when its load takes the
# lease, so an experiment write removes them in O(its own keys), without a
# SCAN of the keyspace (see cache/invalidation.py).
INDEXED_FAMILIES = frozenset({"metrics", "analytics"})


def index_of(key: str) -> tuple[str, str] | None:
    """``(family, experiment_id)`` of a key kept in an experiment's index, else ``None``."""
    family, _, rest = key.partition(":")
    if family not in INDEXED_FAMILIES:
        return None
    return family, rest.partition(":")[0]


def indexed_pattern(pattern: str) -> tuple[str, str] | None:
    """``(family, experiment_id)`` when ``pattern`` is exactly ``family:{id}:*`` of an index."""
    family, _, rest = pattern.partition(":")
    entity, sep, tail = rest.partition(":")
    if family not in INDEXED_FAMILIES or sep != ":" or tail != "*":
        return None
    if not entity or any(c in entity for c in "*?[]"):
        return None
    return family, entity


def derived_patterns(experiment_id: str) -> list[str]:
    """What an experiment write invalidates besides its own key (both indexed)."""
    return [f"metrics:{experiment_id}:*", f"analytics:{experiment_id}:*"]


def collection_pattern(collection: str) -> str:
    """Pattern of every cached search of a collection."""
    return f"search:{collection}:*"


def family_of(key: str) -> DataType.ValueType | None:
    """Data type of a well-formed public key, or ``None``."""
    if len(key) > KEY_MAX_LENGTH:
        return None
    match = _KEY_RE.fullmatch(key)
    if match is None:
        return None
    return PUBLIC_FAMILIES.get(match["family"])


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a readable/removable public key, or ``None`` if it is."""
    if not key:
        return "is required"
    if len(key) > KEY_MAX_LENGTH:
        return f"must be at most {KEY_MAX_LENGTH} characters"
    if family_of(key) is None:
        families = ", ".join(f"{f}:" for f in PUBLIC_FAMILIES)
        return (
            "must be a key of a known family (" + families + ") made of "
            "':'-separated segments from [A-Za-z0-9_.-], with no glob characters"
        )
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` may not be used for invalidation, or ``None`` if it may.

    A pattern is confined to one key family by a literal prefix, and bounded in
    length and wildcards, because user-supplied globs are a known
    denial-of-service vector for Redis (CVE-2022-36021, CVE-2024-31228).
    """
    if not pattern:
        return "is required"
    if len(pattern) > PATTERN_MAX_LENGTH:
        return f"must be at most {PATTERN_MAX_LENGTH} characters"
    match = _PATTERN_RE.fullmatch(pattern)
    if match is None or match["family"] not in PUBLIC_FAMILIES:
        families = ", ".join(f"{f}:" for f in PUBLIC_FAMILIES)
        return (
            "must start with a literal key family prefix (" + families + ") and use only "
            "[A-Za-z0-9_.-:] and the globs * ? [ ]; a bare '*' is not allowed"
        )
    if sum(pattern.count(c) for c in "*?[") > PATTERN_MAX_WILDCARDS:
        return f"must hold at most {PATTERN_MAX_WILDCARDS} glob characters"
    return None


class KeySpace:
    """The Redis form of every key: namespace and hash tag, added and removed in one place."""

    def __init__(self, namespace: str = "") -> None:
        if NAMESPACE_RE.fullmatch(namespace) is None:
            raise ValueError(
                "namespace must be empty or 1..64 characters of [A-Za-z0-9_.-] ending in ':'"
            )
        self.namespace = namespace

    def redis_key(self, key: str) -> str:
        """The Redis key of a client-visible key (``family:{entity}:rest``)."""
        return self.namespace + _tagged(key)

    def client_key(self, redis_key: str) -> str:
        """The client-visible form of a Redis key (public or internal): no namespace, no tag."""
        bare = redis_key.removeprefix(self.namespace)
        opening = bare.find("{")
        closing = bare.find("}", opening + 1)
        if opening < 0 or closing < 0:
            return bare
        return bare[:opening] + bare[opening + 1 : closing] + bare[closing + 1 :]

    def redis_pattern(self, pattern: str) -> str:
        """A Redis glob matching at least every key ``pattern`` matches (client form).

        Exact when the entity segment is literal (``metrics:e1:*`` becomes
        ``metrics:{e1}:*``); otherwise a superset up to the first glob character
        of the entity (``assignment:*:u1`` becomes ``assignment:{*``), to be
        filtered with ``matches`` on the client form.
        """
        return self.namespace + _tagged_pattern(pattern)

    @staticmethod
    def pattern_is_exact(pattern: str) -> bool:
        """Whether ``redis_pattern(pattern)`` matches exactly the keys ``pattern`` does."""
        if pattern.startswith(_NESTED):
            pattern = pattern.partition(":")[2]
        entity = pattern.partition(":")[2].partition(":")[0]
        return not any(c in entity for c in _GLOB)

    def internal(self, family: str, *parts: str) -> str:
        """A Redis key of an internal family; the first part is its hash tag.

        ``internal("dedup", "ev1")`` is ``_dedup:{ev1}``; ``internal("rt", exp,
        variant, ...)`` is ``_rt:{exp}:variant:...``; with no parts, ``_family``.
        """
        if not parts:
            return f"{self.namespace}_{family}"
        head, *tail = parts
        return self.namespace + ":".join((f"_{family}", f"{{{head}}}", *tail))

    def lease(self, key: str) -> str:
        """The Redis key of the load lease of a client-visible key (same slot as the key)."""
        return self.redis_key(f"_lease:{key}")

    def index(self, family: str, entity: str) -> str:
        """The Redis key of the set indexing ``family`` keys of one entity (same slot)."""
        return self.redis_key(f"_idx:{family}:{entity}")

    def generation(self, collection: str) -> str:
        """The Redis key of a collection's search generation (see ``chroma/search_keys``)."""
        return self.internal("gen", collection)


_GLOB = "*?["
# Internal families whose keys wrap a client key (a lease, an index): the
# wrapped key's entity is their hash tag too.
_NESTED = ("_lease:", "_idx:")


def _tagged(key: str) -> str:
    """``family:entity:rest`` as ``family:{entity}:rest`` (the entity is the hash tag)."""
    if key.startswith(_NESTED):
        head, _, rest = key.partition(":")
        return f"{head}:{_tagged(rest)}"
    family, sep, rest = key.partition(":")
    if not sep:
        return key
    entity, sep2, tail = rest.partition(":")
    return f"{family}:{{{entity}}}{sep2}{tail}"


def _tagged_pattern(pattern: str) -> str:
    """The Redis glob of a client pattern: exact, or a superset (see ``redis_pattern``)."""
    if pattern.startswith(_NESTED):
        head, _, rest = pattern.partition(":")
        return f"{head}:{_tagged_pattern(rest)}"
    family, sep, rest = pattern.partition(":")
    if not sep:
        return pattern
    entity, sep2, tail = rest.partition(":")
    if not any(c in entity for c in _GLOB):
        return f"{family}:{{{entity}}}{sep2}{tail}"
    literal = entity[: min(entity.find(c) for c in _GLOB if c in entity)]
    return f"{family}:{{{literal}*"
