"""What both clients do around a call: credentials, metadata, the request id.

Every call carries an ``x-request-id`` (the caller's, when its metadata has
one, else a fresh random one), the same on every attempt of that call; the
server logs the call under it and echoes it back, and every ``RouterError``
carries it as ``request_id``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import grpc

from mcprouter.client._config import TlsConfig
from mcprouter.client._errors import REQUEST_ID_HEADER

Metadata = Sequence[tuple[str, str]]
"""gRPC metadata: ``(key, value)`` pairs, keys in lower case."""


def with_request_id(
    base: Metadata, extra: Metadata | None
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The metadata of one call (client-wide, then per-call) and its request id."""
    merged = (*base, *(extra or ()))
    for key, value in merged:
        if key == REQUEST_ID_HEADER:
            return merged, value
    request_id = secrets.token_hex(8)
    return (*merged, (REQUEST_ID_HEADER, request_id)), request_id


def credentials(
    token: str | None, tls: TlsConfig | None
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...]]:
    """Channel credentials (``None``: plaintext) and the metadata every call carries.

    Over TLS the token travels as call credentials; without TLS gRPC refuses
    call credentials, so it is plain ``authorization`` metadata.
    """
    if tls is None:
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        return None, metadata
    creds = tls.credentials()
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds, ()
