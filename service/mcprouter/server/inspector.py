"""``mcp-router cache get|ttl|scan|stats``: look inside the cache of any Redis.

Values in Redis are ``CacheEnvelope`` protobufs whose payload is another
message; these commands decode both layers to JSON, with the key's TTL and
whether the entry is still fresh (served ``CACHED``) or only kept to be
served ``STALE``. Internal keys (``_dedup:``, ``_rt:``, ``_gen:``, ``_lease:``)
are shown by their Redis type. Every command only reads: no key is written,
and ``scan`` walks the keyspace with ``SCAN MATCH COUNT`` (never ``KEYS``),
stopping at ``--limit`` keys.

Keys are given as clients see them (``experiment:checkout-v2``); the
``--namespace`` (default ``$KEY_NAMESPACE``) is added in front, as the server
does.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from mcprouter.server.keys import PUBLIC_FAMILIES, KeySpace, pattern_problem
from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope
from mcprouter.v1.events_pb2 import Analytics, EventMetrics
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.search_pb2 import SearchResult
from mcprouter.v1.serve_status_pb2 import DataType

PAYLOAD_TYPES: dict[DataType.ValueType, type[Message]] = {
    DataType.DATA_TYPE_EXPERIMENT: Experiment,
    DataType.DATA_TYPE_ASSIGNMENT: Assignment,
    DataType.DATA_TYPE_USER_PROFILE: UserProfile,
    DataType.DATA_TYPE_EVENT_METRICS: EventMetrics,
    DataType.DATA_TYPE_ANALYTICS: Analytics,
    DataType.DATA_TYPE_SEARCH: SearchResult,
}
INTERNAL_FAMILIES = ("_dedup", "_rt", "_gen", "_lease")
MAX_LIMIT = 100_000


def to_json(message: Message) -> dict[str, Any]:
    """A message as JSON with every field, zeros included (so nothing vanishes)."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def decode_envelope(raw: bytes, *, now: float) -> dict[str, Any]:
    """The envelope and its typed payload as JSON, with freshness at ``now``."""
    try:
        envelope = CacheEnvelope.FromString(raw)
    except DecodeError:
        return {"error": "not a CacheEnvelope", "bytes": len(raw)}
    out: dict[str, Any] = {
        "data_type": DataType.Name(envelope.data_type),
        "schema_version": envelope.schema_version,
        "not_found": envelope.not_found,
    }
    if envelope.HasField("stored_at"):
        stored_at = envelope.stored_at.ToNanoseconds() / 1e9
        out["stored_at"] = _iso(stored_at)
        out["age_s"] = round(now - stored_at, 3)
    if envelope.HasField("fresh_until"):
        fresh_until = envelope.fresh_until.ToNanoseconds() / 1e9
        out["fresh_until"] = _iso(fresh_until)
        out["fresh"] = now < fresh_until
        out["fresh_for_s" if now < fresh_until else "stale_for_s"] = round(
            abs(fresh_until - now), 3
        )
    if envelope.HasField("load_duration"):
        out["load_duration_s"] = envelope.load_duration.ToNanoseconds() / 1e9
    payload_type = PAYLOAD_TYPES.get(envelope.data_type)
    if envelope.not_found:
        out["value"] = None
    elif payload_type is None:
        out["value"] = {"error": "unknown data type", "bytes": len(envelope.payload)}
    else:
        try:
            out["value"] = to_json(payload_type.FromString(envelope.payload))
        except DecodeError:
            out["value"] = {"error": f"not a {payload_type.__name__}"}
    return out


class Inspector:
    """Read-only views of one Redis database under one key namespace."""

    def __init__(self, client: redis.Redis, namespace: str = "") -> None:
        self._redis = client
        self._keyspace = KeySpace(namespace)
        self._namespace = namespace

    def _redis_key(self, key: str) -> str:
        return self._keyspace.redis_key(key)

    def _ttl_ms(self, rkey: str) -> int | None:
        """Remaining TTL in ms; ``None`` for a key without expiry (PTTL -1)."""
        ttl = int(self._redis.pttl(rkey))
        return None if ttl == -1 else ttl

    def get(self, key: str, *, now: float | None = None) -> dict[str, Any]:
        """Everything about one key: TTL, and its value decoded by the key's family."""
        now = time.time() if now is None else now
        rkey = self._redis_key(key)
        kind = self._redis.type(rkey)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        out: dict[str, Any] = {"key": key, "redis_key": rkey, "exists": kind != "none"}
        if kind == "none":
            return out
        out["redis_type"] = kind
        out["ttl_ms"] = self._ttl_ms(rkey)
        if key.startswith("_"):
            out["value"] = self._internal_value(rkey, kind)
        elif kind == "string":
            raw = self._redis.get(rkey)
            out["envelope"] = decode_envelope(raw if isinstance(raw, bytes) else b"", now=now)
        else:
            out["value"] = f"unexpected {kind} in a cache family"
        return out

    def _internal_value(self, rkey: str, kind: str) -> Any:
        if kind == "string":
            raw = self._redis.get(rkey)
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            # HyperLogLogs are strings too: show their estimate, not their bytes.
            if isinstance(raw, bytes) and raw.startswith(b"HYLL"):
                return {"hyperloglog_count": int(self._redis.pfcount(rkey))}
            return text
        if kind == "hash":
            fields = self._redis.hgetall(rkey)
            return {_text(k): _text(v) for k, v in fields.items()}
        return f"({kind})"

    def ttl(self, key: str, *, now: float | None = None) -> dict[str, Any]:
        """TTL and freshness of one key: ``fresh``, ``stale``, ``no-expiry`` or ``missing``."""
        full = self.get(key, now=now)
        out: dict[str, Any] = {k: full[k] for k in ("key", "exists", "ttl_ms") if k in full}
        envelope = full.get("envelope", {})
        for name in ("fresh_until", "fresh_for_s", "stale_for_s"):
            if name in envelope:
                out[name] = envelope[name]
        if not full["exists"]:
            out["state"] = "missing"
        elif "fresh" in envelope:
            out["state"] = "fresh" if envelope["fresh"] else "stale"
        else:
            out["state"] = "no-expiry" if full.get("ttl_ms") is None else "internal"
        return out

    def scan(self, pattern: str, *, limit: int, count: int = 500) -> Iterator[str]:
        """Keys (as clients see them) matching ``pattern``, at most ``limit`` of them.

        ``pattern`` is a family name (``experiment``, ``_dedup``), or a glob
        that starts with a family (``metrics:checkout-v2:*``), checked like
        ``Invalidate`` patterns so no scan can cross families.
        """
        glob = scan_pattern(pattern)
        match = self._keyspace.redis_pattern(glob)
        exact = self._keyspace.pattern_is_exact(glob)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"--limit must be 1..{MAX_LIMIT}")
        found = 0
        for rkey in self._redis.scan_iter(match=match, count=count):
            key = self._keyspace.client_key(_text(rkey))
            if not exact and not fnmatch.fnmatchcase(key, glob):
                continue  # the server-side glob is a superset (hash tags)
            yield key
            found += 1
            if found >= limit:
                return

    def stats(self, *, limit: int, count: int = 500) -> dict[str, Any]:
        """Redis memory and key count, and keys per family under the namespace (bounded)."""
        memory = self._redis.info("memory")
        families: dict[str, int] = {}
        scanned = 0
        complete = True
        for rkey in self._redis.scan_iter(match=self._namespace + "*", count=count):
            if scanned >= limit:
                complete = False
                break
            scanned += 1
            key = self._keyspace.client_key(_text(rkey))
            family = key.split(":", 1)[0]
            families[family] = families.get(family, 0) + 1
        return {
            "namespace": self._namespace,
            "redis_used_memory": memory.get("used_memory"),
            "redis_used_memory_human": memory.get("used_memory_human"),
            "redis_maxmemory_policy": memory.get("maxmemory_policy"),
            "redis_db_keys": int(self._redis.dbsize()),
            "namespace_keys_by_family": dict(sorted(families.items())),
            "namespace_keys_scanned": scanned,
            "complete": complete,
        }


def scan_pattern(pattern: str) -> str:
    """The glob to SCAN for a family name or a family-prefixed pattern; ``ValueError`` if unsafe."""
    if pattern in PUBLIC_FAMILIES or pattern in INTERNAL_FAMILIES:
        return pattern + ":*"
    family = pattern.split(":", 1)[0]
    if family in INTERNAL_FAMILIES:
        # Same rules as a public pattern, checked on the public spelling.
        problem = pattern_problem("experiment" + pattern[len(family) :])
    else:
        problem = pattern_problem(pattern)
    if problem:
        families = ", ".join((*PUBLIC_FAMILIES, *INTERNAL_FAMILIES))
        raise ValueError(f"pattern {pattern!r} {problem} (families: {families})")
    return pattern


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def dumps(value: Any) -> str:
    """JSON for the terminal: indented, UTF-8, no NaN (null instead)."""
    return json.dumps(_no_nan(value), indent=2, ensure_ascii=False)


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def run(command: str, args: Sequence[str], *, url: str, namespace: str, limit: int) -> int:
    """Run one ``cache`` subcommand, printing JSON; return the exit status."""
    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        inspector = Inspector(client, namespace)
        if command in ("get", "ttl"):
            view = inspector.get if command == "get" else inspector.ttl
            results = [view(key) for key in args]
            print(dumps(results[0] if len(results) == 1 else results))
            return 0 if all(r["exists"] for r in results) else 1
        if command == "scan":
            for key in inspector.scan(args[0], limit=limit):
                print(key)
            return 0
        print(dumps(inspector.stats(limit=limit)))
        return 0
    finally:
        client.close()
