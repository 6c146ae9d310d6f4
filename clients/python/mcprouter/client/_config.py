"""Connection settings: TLS material, the retry policy and the channel's service config.

Retries are for idempotent calls only, on ``UNAVAILABLE`` only, with
exponential backoff. gRPC's service config (the ``grpc.service_config``
channel option) retries by *method name*, which works for ``GetCached``,
``Invalidate``, ``Stats`` and ``grpc.health.v1.Health/Check``. It cannot
work for ``RouteData``: one method carries both reads and writes, told apart
only by the request's ``oneof operation``, which the service config never
sees. Retrying a ``track_events`` could double-count nothing (events are
deduplicated) but would turn a stored batch into DUPLICATEs, and retrying a
version-checked upsert that did commit would answer ``ABORTED``; so
``RouteData`` gets no service-config retries, and the client retries its read
operations itself with the same policy (see ``_retry.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ROUTER_SERVICE = "mcprouter.v1.RouterService"
HEALTH_SERVICE = "grpc.health.v1.Health"
IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    (ROUTER_SERVICE, "GetCached"),
    (ROUTER_SERVICE, "Invalidate"),
    (ROUTER_SERVICE, "Stats"),
    (HEALTH_SERVICE, "Check"),
)
"""Methods retried by the channel's service config (every call of them is idempotent)."""

PemSource = bytes | str | os.PathLike[str]
"""PEM material: the bytes themselves, or the path of a file holding them."""


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel; every field is optional.

    Each PEM field takes the bytes themselves or a path (``str`` or ``Path``).

    Attributes:
        ca: Root certificates to verify the server with; ``None`` uses the
            system roots.
        cert: Client certificate chain, for mutual TLS (needs ``key``).
        key: Client private key, for mutual TLS (needs ``cert``).
        server_name: Overrides the name checked against the server's
            certificate (``grpc.ssl_target_name_override``), for tests and
            connections through an IP address.

    Example:
        >>> tls = TlsConfig(ca="certs/ca.pem", cert="certs/me.pem", key="certs/me.key")
        >>> client = RouterClient.connect("router.internal:443", tls=tls, token="...")
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TlsConfig: cert and key go together (mutual TLS needs both)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The ``grpc.ssl_channel_credentials`` of this configuration."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca),
            private_key=_read_pem(self.key),
            certificate_chain=_read_pem(self.cert),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How idempotent calls are retried on ``UNAVAILABLE`` (and on nothing else).

    Attempt ``n`` (from 1) waits a random time in ``[0, min(max_backoff,
    initial_backoff * multiplier ** (n - 1))]`` before attempt ``n + 1``
    ("full jitter", as gRPC's own retries do). Every attempt shares the
    call's one deadline: no retry starts once its backoff would pass it.

    Attributes:
        max_attempts: Attempts in all, the first included (2..5; gRPC caps
            service-config retries at 5).
        initial_backoff: Upper bound of the first wait, in seconds.
        max_backoff: Cap of every wait, in seconds.
        multiplier: Growth of the bound per attempt.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("RetryPolicy.max_attempts must be 2..5")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("RetryPolicy needs 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")

    def backoff_bound(self, attempt: int) -> float:
        """The upper bound of the wait after attempt ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1)))


def service_config(retry: RetryPolicy | None) -> dict[str, Any]:
    """The channel's service config: retries for ``IDEMPOTENT_METHODS`` only.

    ``RouteData`` deliberately has no entry (see the module docstring).
    """
    if retry is None:
        return {}
    return {
        "methodConfig": [
            {
                "name": [{"service": s, "method": m} for s, m in IDEMPOTENT_METHODS],
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": f"{retry.initial_backoff:.3f}s",
                    "maxBackoff": f"{retry.max_backoff:.3f}s",
                    "backoffMultiplier": retry.multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }


DEFAULT_CHANNELS = 4
"""Channels ``connect`` opens: several TCP connections, so the calls of one client
spread over the workers of ``serve --workers N`` (SO_REUSEPORT spreads connections,
not calls) and over servers behind a connection-level (L4) balancer."""


def pool_options(index: int) -> list[tuple[str, Any]]:
    """Options that give channel ``index`` of a pool a TCP connection of its own.

    gRPC shares one connection among channels with equal targets and options
    (its global subchannel pool); a local pool per channel, and an option
    that differs per channel, keep them apart.
    """
    return [("grpc.use_local_subchannel_pool", 1), ("mcprouter.channel_index", index)]


def channel_options(
    retry: RetryPolicy | None,
    tls: TlsConfig | None,
    extra: tuple[tuple[str, Any], ...] = (),
) -> list[tuple[str, Any]]:
    """Channel options: the service config, retries switched on, TLS name override."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if retry is not None else 0),
        ("grpc.primary_user_agent", "mcprouter-python"),
    ]
    if retry is not None:
        options.append(("grpc.service_config", json.dumps(service_config(retry))))
    if tls is not None and tls.server_name is not None:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(extra)
    return options
