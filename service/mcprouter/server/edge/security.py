"""Transport security and request limits of the server, as one frozen config.

``SecurityConfig`` gathers what ``build_server``/``serve`` need from
``Settings``: TLS (certificate and key files; mutual TLS when a client CA
file is set), bearer tokens (``auth.BearerAuth``), the methods reachable
without a token, and the in-flight bound (``inflight.InFlightLimiter``).
Tests build one directly; the server builds it with ``from_settings``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mcprouter.server.config import Settings

# Probes and `grpcurl list/describe` must work without a token by default.
DEFAULT_AUTH_EXEMPT_METHODS = (
    "/grpc.health.v1.Health/*",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
)
DEFAULT_MAX_IN_FLIGHT_RPCS = 256


def parse_tokens(text: str) -> tuple[str, ...]:
    """Tokens from a comma- or newline-separated text; blanks and ``#`` lines skipped."""
    tokens = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        tokens += [part.strip() for part in line.split(",") if part.strip()]
    return tuple(tokens)


@dataclass(frozen=True)
class SecurityConfig:
    """TLS, authentication and limits of one server.

    Attributes:
        tls_cert_file: PEM certificate chain of the server; TLS when set.
        tls_key_file: PEM private key of that certificate.
        tls_client_ca_file: PEM CA bundle; when set, clients must present a
            certificate it signed (mutual TLS).
        auth_tokens: Accepted bearer tokens; empty turns authentication off.
            Excluded from ``repr`` so a logged config never shows them.
        auth_exempt_methods: Full method names (``/pkg.Service/Method``) or
            ``/pkg.Service/*`` reachable without a token.
        max_in_flight_rpcs: Unary RPCs handled at once; more are refused
            with RESOURCE_EXHAUSTED instead of queued.
    """

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_exempt_methods: tuple[str, ...] = DEFAULT_AUTH_EXEMPT_METHODS
    max_in_flight_rpcs: int = DEFAULT_MAX_IN_FLIGHT_RPCS

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        if self.max_in_flight_rpcs < 1:
            raise ValueError("MAX_IN_FLIGHT_RPCS must be at least 1")

    @property
    def tls(self) -> bool:
        """Whether the server listens with TLS."""
        return self.tls_cert_file is not None

    @property
    def mutual_tls(self) -> bool:
        """Whether clients must present a certificate."""
        return self.tls_client_ca_file is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityConfig:
        """The config of ``Settings`` (fields ``tls_*``, ``auth_*``, ``max_in_flight_rpcs``).

        Tokens come from ``AUTH_TOKENS`` (comma-separated) and/or the file
        ``AUTH_TOKENS_FILE`` (one per line).
        """
        tokens: list[str] = []
        if settings.auth_tokens is not None:
            tokens += parse_tokens(settings.auth_tokens.get_secret_value())
        if settings.auth_tokens_file is not None:
            tokens += parse_tokens(settings.auth_tokens_file.read_text(encoding="utf-8"))
        return cls(
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            tls_client_ca_file=settings.tls_client_ca_file,
            auth_tokens=tuple(dict.fromkeys(tokens)),
            auth_exempt_methods=_split(settings.auth_exempt_methods),
            max_in_flight_rpcs=settings.max_in_flight_rpcs,
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials read from the files now, or ``None`` without TLS."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        key = self.tls_key_file.read_bytes()
        chain = self.tls_cert_file.read_bytes()
        ca_file = self.tls_client_ca_file
        client_ca = None if ca_file is None else ca_file.read_bytes()
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


def add_port(server: grpc.aio.Server, address: str, config: SecurityConfig) -> int:
    """Listen on ``address`` with TLS when configured; return the bound port (0: failed)."""
    credentials = config.server_credentials()
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def _split(value: str | Iterable[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())
