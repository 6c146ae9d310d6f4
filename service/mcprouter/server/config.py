"""Settings: read once from the environment (and an optional ``.env``), then frozen.

Every field is documented here; ``mcp-router serve --help`` and the README's
configuration table are generated from / checked against these descriptions.
A store URL left unset selects the embedded default for that store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcprouter.server.keys import NAMESPACE_RE


class Settings(BaseSettings):
    """Configuration of one mcp-router process."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    listen_address: str = Field(
        "localhost:50051", description="host:port the gRPC server listens on."
    )
    health_listen_address: str = Field(
        "",
        description="host:port of an extra plaintext listener serving only grpc.health.v1, for "
        "Kubernetes gRPC probes and container healthchecks, which cannot speak TLS or send "
        "tokens; empty: off.",
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="Server processes on this machine ('auto': one per core available to the "
        "process). Above 1 a supervisor starts the embedded backends once, forks the workers "
        "(they share LISTEN_ADDRESS through SO_REUSEPORT), restarts any that dies and drains "
        "them all on SIGTERM; `serve --workers` overrides it.",
    )
    data_dir: Path = Field(
        Path(".mcp-router"), description="Folder for the embedded servers' data and logs."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL of the cache role (evictable: maxmemory with allkeys-lru), e.g. "
        "redis://host:6379/0, or redis+cluster://host:6379 for any node of a Redis Cluster. "
        "Unset: embedded Valkey (persisted under DATA_DIR).",
    )
    redis_state_url: str | None = Field(
        None,
        description="Redis URL of the state role: dedup records, search generations and "
        "real-time counters, which must never be evicted (noeviction, persisted). Unset: "
        "the server of REDIS_URL.",
    )
    redis_cluster: bool = Field(
        False,
        description="Treat REDIS_URL and REDIS_STATE_URL as nodes of a Redis Cluster (the same "
        "as the redis+cluster:// scheme).",
    )
    redis_pool_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Maximum Redis connections (per node on a cluster); callers wait for one.",
    )
    redis_timeout_ms: int = Field(
        250, ge=10, le=60_000, description="Redis socket and connect timeout (fail fast)."
    )
    redis_pool_timeout_ms: int = Field(
        500, ge=10, le=60_000, description="How long a caller waits for a free Redis connection."
    )
    postgres_dsn: str | None = Field(
        None, description="PostgreSQL DSN, e.g. postgresql://u:p@host/db. Unset: embedded."
    )
    postgres_pool_size: int = Field(
        10, ge=1, le=1_000, description="Maximum PostgreSQL connections."
    )
    postgres_command_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3_600,
        description="Bound on every PostgreSQL statement, also for shared cache loads that "
        "outlive their first caller's deadline (the server cancels the query).",
    )
    migrate_on_start: bool = Field(
        False,
        description="Apply database migrations at start-up (always done for the embedded "
        "PostgreSQL; otherwise run `mcp-router migrate`).",
    )
    clickhouse_url: str | None = Field(
        None,
        description="ClickHouse URL (http(s)://user:pass@host:8123/db or chdb:///abs/path). "
        "Unset: embedded chDB under DATA_DIR/clickhouse.",
    )
    chroma_url: str | None = Field(
        None,
        description="Chroma server URL, http(s)://host[:port] (port defaults to 8000). "
        "Unset: embedded PersistentClient at DATA_DIR/chroma.",
    )
    chroma_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Bound on each Chroma call; a timed-out search is served STALE or UNAVAILABLE.",
    )
    chroma_embedded_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads running the embedded Chroma client's blocking calls.",
    )
    key_namespace: str = Field(
        "", description="Prefix in front of every Redis key, e.g. 'prod:' (must end in ':')."
    )
    ttl_experiment_s: int = Field(86_400, ge=1, description="Freshness of cached experiments.")
    ttl_assignment_s: int = Field(3_600, ge=1, description="Freshness of cached assignments.")
    ttl_user_profile_s: int = Field(1_800, ge=1, description="Freshness of cached profiles.")
    ttl_event_metrics_s: int = Field(900, ge=1, description="Freshness of cached hourly metrics.")
    ttl_analytics_s: int = Field(7_200, ge=1, description="Freshness of cached daily analytics.")
    ttl_closed_hour_metrics_s: int = Field(
        604_800,
        ge=1,
        description="Freshness of cached metrics of hours closed over a day ago (final; "
        "late events invalidate them).",
    )
    ttl_search_s: int = Field(600, ge=1, description="Freshness of cached semantic searches.")
    cache_enabled: bool = Field(
        True, description="False sends every read straight to its store (for comparisons)."
    )
    cache_stale_ttl_s: int = Field(
        3_600,
        ge=0,
        description="How long an entry is kept after its freshness ends, to be served "
        "as STALE when its store fails.",
    )
    cache_negative_ttl_s: int = Field(
        30, ge=1, description="How long a 'not found' answer is cached."
    )
    cache_local_max_entries: int = Field(
        10_000,
        ge=0,
        description="Entries of the in-process L1 in front of Redis (hot keys skip the "
        "Redis round trip); 0 turns it off.",
    )
    cache_local_max_age_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Longest an L1 entry is served; every invalidation also reaches the "
        "L1 of every instance through Redis pub/sub.",
    )
    cache_local_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Memory budget of the L1 (serialized value sizes plus a fixed overhead "
        "per entry); an entry over an eighth of it is never admitted.",
    )
    cache_feed_ping_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="A quiet invalidation feed is PINGed this often; no answer within one "
        "more interval turns the L1 off until the feed reconnects.",
    )
    ingest_max_batch: int = Field(
        5_000,
        ge=1,
        le=1_000_000,
        description="Pending events that trigger a ClickHouse insert at once (group commit).",
    )
    ingest_max_delay_ms: float = Field(
        15.0, ge=0, le=1_000, description="Longest an event waits for the insert that carries it."
    )
    ingest_max_pending: int = Field(
        100_000,
        ge=1,
        description="Events that may wait for ClickHouse; beyond this, track_events answers "
        "RESOURCE_EXHAUSTED (at least INGEST_MAX_BATCH).",
    )
    dedup_ttl_s: int = Field(
        604_800,
        ge=1,
        description="How long a stored event's id is remembered for deduplication (done record).",
    )
    dedup_pending_ttl_s: int = Field(
        90,
        ge=10,
        le=86_400,
        description="How long an event id stays claimed while its insert is in flight (pending "
        "record; retries get UNAVAILABLE EVENTS_IN_FLIGHT), and so the longest a crash between "
        "claim and insert blocks retries. Must exceed CLICKHOUSE_INSERT_TIMEOUT_S + "
        "INGEST_MAX_DELAY_MS + 5 s.",
    )
    ingest_max_concurrent_inserts: int = Field(
        4,
        ge=1,
        le=64,
        description="ClickHouse inserts that may run at once (each on its own client and "
        "thread); while all are busy, new events gather into the next, larger batch.",
    )
    clickhouse_query_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="ClickHouse reads that may run at once (each on its own client and thread; "
        "inserts have a lane of their own, so a slow query never delays them).",
    )
    clickhouse_insert_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3_600,
        description="Bound on one ClickHouse insert (HTTP send/receive timeout).",
    )
    ingestion_lag_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="How long after its end an hour is still served from the real-time counters.",
    )
    redis_breaker_failures: int = Field(
        5, ge=1, description="Consecutive Redis failures that open the circuit breaker."
    )
    redis_breaker_reset_s: float = Field(
        2.0, gt=0, description="Seconds the breaker stays open before probing Redis again."
    )
    health_probe_interval_s: float = Field(
        2.0, gt=0, le=300, description="Seconds between backend health probes."
    )
    drain_delay_s: float = Field(
        2.0,
        ge=0,
        le=300,
        description="On SIGTERM, seconds the server keeps serving after health turned "
        "NOT_SERVING, so load balancers stop sending before it stops accepting.",
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="After the drain delay, seconds in-flight RPCs get to finish.",
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Close a client connection (GOAWAY, calls in flight get SHUTDOWN_GRACE_S) "
        "after this many seconds, so clients reconnect and spread again over the workers of "
        "`serve --workers N` (a restarted worker gets new connections only) or over replicas "
        "behind an L4 balancer; 0: never.",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request or response message accepted."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain of the server; set with TLS_KEY_FILE to serve TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of TLS_CERT_FILE.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS).",
    )
    auth_tokens: SecretStr | None = Field(
        None,
        description="Comma-separated bearer tokens accepted in 'authorization: Bearer <token>'; "
        "unset (and no AUTH_TOKENS_FILE): no authentication. Never logged.",
    )
    auth_tokens_file: Path | None = Field(
        None,
        description="File of bearer tokens, one per line ('#' comments); adds to AUTH_TOKENS.",
    )
    auth_exempt_methods: str = Field(
        "/grpc.health.v1.Health/*,/grpc.reflection.v1.ServerReflection/*,"
        "/grpc.reflection.v1alpha.ServerReflection/*",
        description="Comma-separated methods (/pkg.Service/Method or /pkg.Service/*) reachable "
        "without a token; empty: none.",
    )
    max_in_flight_rpcs: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Unary RPCs handled at once (health checks not counted); beyond this a call "
        "is refused with RESOURCE_EXHAUSTED, not queued.",
    )
    metrics_address: str = Field(
        "",
        description="host:port of the Prometheus /metrics endpoint (plain HTTP), e.g. "
        "'localhost:9464' or ':9464' for every interface; empty turns it off.",
    )
    stats_publish_interval_s: float = Field(
        5.0,
        ge=0,
        le=3_600,
        description="How often each process publishes its Stats counters to Redis, so that "
        "Stats with scope FLEET sums every live process; 0: never (FLEET then reports this "
        "process alone).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json' for one JSON object per log line (with request_id), or 'text'."
    )
    access_log: bool = Field(
        False,
        description="Log one INFO line per call (method, operation, serve status, code, "
        "duration, request id); off: DEBUG, and INFO only for server-side failures.",
    )
    otel_enabled: bool = Field(
        False,
        description="Export OpenTelemetry traces over OTLP (needs the 'otel' extra; endpoint and "
        "service name from the standard OTEL_* variables).",
    )
    log_level: str = Field("INFO", description="Logging level (DEBUG, INFO, WARNING, ERROR).")

    @field_validator("key_namespace")
    @classmethod
    def _namespace_shape(cls, value: str) -> str:
        if NAMESPACE_RE.fullmatch(value) is None:
            raise ValueError("must be empty or 1..64 characters of [A-Za-z0-9_.-] ending in ':'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.ingest_max_pending < self.ingest_max_batch:
            raise ValueError("INGEST_MAX_PENDING must be at least INGEST_MAX_BATCH")
        # An insert must be able to start after the batcher's delay and still
        # end before its events' pending records expire (see clickhouse/dedup.py).
        least = self.clickhouse_insert_timeout_s + self.ingest_max_delay_ms / 1000 + 5
        if self.dedup_pending_ttl_s <= least:
            raise ValueError(
                "DEDUP_PENDING_TTL_S must exceed CLICKHOUSE_INSERT_TIMEOUT_S + "
                f"INGEST_MAX_DELAY_MS + 5 s ({least:g} s)"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self

    @field_validator("workers")
    @classmethod
    def _workers_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("must be 'auto' or 1..1024")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level


def describe_settings() -> list[tuple[str, str, str]]:
    """(ENV_VAR, default, description) for every setting, in declaration order."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.get_default()
        shown = "(unset)" if default is None else str(default)
        rows.append((name.upper(), shown if shown else "(empty)", info.description or ""))
    return rows
