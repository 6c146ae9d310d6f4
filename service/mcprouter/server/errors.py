"""Every exception the server reports to a caller: one tree, each class one status code.

Stores translate their drivers' failures into this tree once, at their own
boundary (``postgres/failures.py``, ...); handlers raise it; the edge
(``edge/status.py``) turns it into a ``google.rpc.Status`` with an
``ErrorInfo`` (and a ``BadRequest`` for invalid input). Anything else that
escapes a handler is a bug: logged with its traceback, answered INTERNAL.
Nothing here imports gRPC: ``code`` is the canonical status code's name.

    RouterError                      (UNKNOWN; never raised directly)
    ├── InvalidArgument              INVALID_ARGUMENT + BadRequest field violations
    ├── NotFound                     NOT_FOUND
    ├── AlreadyExists                ALREADY_EXISTS
    ├── FailedPrecondition           FAILED_PRECONDITION
    ├── Aborted                      ABORTED (optimistic-concurrency conflict)
    ├── ResourceExhausted            RESOURCE_EXHAUSTED
    ├── Unimplemented                UNIMPLEMENTED (processor not landed/configured)
    ├── Unauthenticated              UNAUTHENTICATED (bearer token missing or wrong)
    ├── DeadlineExceeded             DEADLINE_EXCEEDED (the caller's deadline passed)
    └── Unavailable                  UNAVAILABLE (store down, nothing stale to serve)
        ├── CacheUnavailable         UNAVAILABLE (a cache-only RPC while Redis is down)
        └── StoreClosed              UNAVAILABLE (a store used after shutdown began)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ERROR_DOMAIN = "mcprouter.v1"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``get_experiment.experiment_id``), why, and its kind.

    ``reason`` is the stable UPPER_SNAKE kind of the problem (``INVALID_ID``,
    ``HOUR_NOT_TRUNCATED``...; the list is in ``validation.Reason``); it goes on
    the wire as ``BadRequest.FieldViolation.reason``.
    """

    field: str
    description: str
    reason: str = "INVALID_ARGUMENT"


class RouterError(Exception):
    """Root of every error the server reports to a caller."""

    code: str = "UNKNOWN"  # the canonical gRPC status code's name
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(RouterError):
    """The request is malformed; ``violations`` name every bad field."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        if len(violations) > 5:
            summary += f"; and {len(violations) - 5} more"
        # The ErrorInfo names the first problem's kind, so a caller can branch
        # on one string; every violation keeps its own reason in the BadRequest.
        super().__init__(
            f"invalid request: {summary}",
            reason=reason or violations[0].reason,
            metadata=metadata,
        )
        self.violations = violations

    @classmethod
    def single(
        cls, field: str, description: str, reason: str = "INVALID_ARGUMENT"
    ) -> InvalidArgument:
        """Build the common one-violation error."""
        return cls([FieldViolation(field, description, reason)])


class NotFound(RouterError):
    """The requested entity does not exist in its store."""

    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(RouterError):
    """The entity to create exists already."""

    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(RouterError):
    """The system is not in a state that allows the operation."""

    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Aborted(RouterError):
    """A concurrent change won (e.g. a stale optimistic-concurrency version)."""

    code = "ABORTED"
    default_reason = "ABORTED"


class ResourceExhausted(RouterError):
    """A limit of the server was reached."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unimplemented(RouterError):
    """The operation's processor has not landed or is not configured."""

    code = "UNIMPLEMENTED"
    default_reason = "PROCESSOR_NOT_AVAILABLE"


class Unavailable(RouterError):
    """A store failed and nothing stale could be served instead."""

    code = "UNAVAILABLE"
    default_reason = "STORE_UNAVAILABLE"


class CacheUnavailable(Unavailable):
    """Redis failed during an RPC that has no store to fall back to."""

    default_reason = "CACHE_UNAVAILABLE"


class StoreClosed(Unavailable):
    """A store was used after the server began shutting down."""

    default_reason = "SHUTTING_DOWN"


class Unauthenticated(RouterError):
    """The call carries no valid bearer token."""

    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class DeadlineExceeded(RouterError):
    """The caller's deadline passed before the work was done."""

    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"
