"""Typed exceptions for the gRPC statuses mcp-router answers with.

Every failed call raises a subclass of ``RouterError``, chosen by the status
code, with the ``google.rpc`` details of the status decoded onto it: the
``ErrorInfo`` (``reason``, ``domain``, ``metadata``) and, for bad input, the
``BadRequest`` field violations, and the call's request id (the
``x-request-id`` the server logged the call under). The original gRPC error
is the exception's ``__cause__``.

    RouterError                  any other status code (UNKNOWN, CANCELLED, ...)
    ├── InvalidArgument          INVALID_ARGUMENT (``field_violations`` name the fields)
    ├── NotFound                 NOT_FOUND
    ├── AlreadyExists            ALREADY_EXISTS
    ├── PermissionDenied         PERMISSION_DENIED
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── Aborted                  ABORTED (a stale ``version`` on an upsert)
    ├── ResourceExhausted        RESOURCE_EXHAUSTED
    ├── Unimplemented            UNIMPLEMENTED
    ├── Internal                 INTERNAL
    ├── Unauthenticated          UNAUTHENTICATED
    ├── DeadlineExceeded         DEADLINE_EXCEEDED
    └── Unavailable              UNAVAILABLE (server or store down; retried for reads)

Example:
    >>> try:
    ...     await client.get_experiment("no spaces*")
    ... except InvalidArgument as error:
    ...     print(error.reason, [v.field for v in error.field_violations])
    INVALID_ID ['get_experiment.experiment_id']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "mcprouter.v1"
"""The ``ErrorInfo.domain`` of every error mcp-router itself reports."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, from a ``google.rpc.BadRequest``.

    Attributes:
        field: The path of the field, e.g. ``get_experiment.experiment_id``.
        description: Why the value was refused.
        reason: The kind of problem, e.g. ``INVALID_ID``, ``HOUR_NOT_TRUNCATED``
            (see the contract's list); ``""`` from servers that send none.
    """

    field: str
    description: str
    reason: str = ""


class RouterError(Exception):
    """Root of every error a ``RouterClient`` call raises.

    Attributes:
        code: The gRPC status code of the failed call.
        message: The status message (``details()`` of the call).
        reason: ``ErrorInfo.reason``, a stable UPPER_SNAKE identifier such as
            ``INVALID_ID`` or ``STORE_UNAVAILABLE``; ``""`` when the status
            carried no ``ErrorInfo`` (e.g. it was produced by the gRPC runtime).
        domain: ``ErrorInfo.domain``; ``"mcprouter.v1"`` for the server's errors.
        metadata: ``ErrorInfo.metadata``, dynamic values of the error (read-only).
        field_violations: The ``BadRequest`` field violations, in order.
        request_id: The call's ``x-request-id`` (the server's echo, else the
            one the client sent): quote it to find the call in the server log.
    """

    status_code: ClassVar[grpc.StatusCode | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code or self.status_code or grpc.StatusCode.UNKNOWN
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.field_violations = field_violations
        self.request_id = request_id

    def __str__(self) -> str:
        # ``NOT_FOUND (EXPERIMENT_NOT_FOUND): ... [request_id=...]``; a reason
        # that only repeats the code is left out.
        reason = f" ({self.reason})" if self.reason and self.reason != self.code.name else ""
        request = f" [request_id={self.request_id}]" if self.request_id else ""
        return f"{self.code.name}{reason}: {self.message}{request}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class InvalidArgument(RouterError):
    """The request is malformed; ``field_violations`` name every bad field."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RouterError):
    """The entity does not exist in its store (the answer may itself be cached briefly)."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RouterError):
    """The entity to create exists already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RouterError):
    """The caller is known but may not perform the operation."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(RouterError):
    """The system is not in a state that allows the operation (e.g. assigning a DRAFT)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RouterError):
    """A concurrent change won: re-read, apply the change to the new ``version``, retry."""

    status_code = grpc.StatusCode.ABORTED


class ResourceExhausted(RouterError):
    """A limit was reached (message size, ingestion backlog); back off before retrying."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(RouterError):
    """The server does not serve this operation (its processor is not configured)."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RouterError):
    """A bug on the server; its log has the traceback."""

    status_code = grpc.StatusCode.INTERNAL


class Unauthenticated(RouterError):
    """The call carried no valid credentials."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(RouterError):
    """The call's deadline passed before an answer arrived; a write may still have happened."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(RouterError):
    """The server could not be reached, or a store failed with nothing stale to serve."""

    status_code = grpc.StatusCode.UNAVAILABLE


_BY_CODE: Mapping[grpc.StatusCode, type[RouterError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unimplemented,
        Internal,
        Unauthenticated,
        DeadlineExceeded,
        Unavailable,
    )
    if cls.status_code is not None
}


def error_class(code: grpc.StatusCode) -> type[RouterError]:
    """The exception class raised for a status code (``RouterError`` for unmapped codes)."""
    return _BY_CODE.get(code, RouterError)


REQUEST_ID_HEADER = "x-request-id"


class FailedCall(Protocol):
    """What a failed call of either gRPC API offers (``AioRpcError``, sync ``RpcError``)."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


def from_rpc_error(error: FailedCall, request_id: str = "") -> RouterError:
    """Translate a failed call into its typed exception, decoding the rich details.

    Statuses without details (e.g. produced by the gRPC runtime when the
    server is unreachable) give an exception with empty ``reason``/``domain``.
    The caller should ``raise from_rpc_error(exc) from exc``.

    Args:
        error: The failed call (async or sync API).
        request_id: The ``x-request-id`` the client sent; the server's echo in
            the trailing metadata wins when there is one.
    """
    code = error.code()
    message = error.details() or ""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        # The details contradict the call's code or message: trust the call.
        status = None
    return from_status(code, message, status, _echoed_request_id(error) or request_id)


def _echoed_request_id(error: FailedCall) -> str:
    try:
        trailing = tuple(error.trailing_metadata() or ())
    except Exception:  # a runtime-made error may carry no metadata at all
        return ""
    for key, value in trailing:
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value
    return ""


def from_status(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    request_id: str = "",
) -> RouterError:
    """Build the typed exception of ``code`` from a decoded ``google.rpc.Status``."""
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
            )
    return error_class(code)(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        request_id=request_id,
    )
