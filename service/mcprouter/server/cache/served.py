"""What the cache-aside core answers, and the errors it raises for a key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from mcprouter.server.errors import NotFound, Unavailable
from mcprouter.v1.serve_status_pb2 import DataType, ServeStatus

M = TypeVar("M", bound=Message)

Loader = Callable[[], Awaitable[M | None]]
"""Reads one value from its store; ``None`` when the store has no such value."""


@dataclass(frozen=True, slots=True)
class Served(Generic[M]):
    """One answer of the cache-aside core.

    Attributes:
        value: The message.
        status: ``SERVE_STATUS_CACHED``, ``_FRESH`` or ``_STALE``.
        key: The client-visible key (without the namespace).
        stored_at: When the value was loaded from its store (UTC).
    """

    value: M
    status: ServeStatus.ValueType
    key: str
    stored_at: datetime


def utc(seconds: float) -> datetime:
    """An aware UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(seconds, UTC)


def parse(payload: bytes, message_type: type[M]) -> M | None:
    """The message in ``payload``, or ``None`` when the bytes do not parse."""
    try:
        return message_type.FromString(payload)
    except DecodeError:
        return None


def check_type(key: str, value: Message | None, message_type: type[Message]) -> None:
    """Reject a loader answer of the wrong class before it is cached for everyone."""
    if value is not None and not isinstance(value, message_type):
        raise TypeError(
            f"loader for {key!r} returned {type(value).__name__}, expected {message_type.__name__}"
        )


def type_name(data_type: DataType.ValueType) -> str:
    """A readable name of a data type (``user profile``)."""
    return DataType.Name(data_type).removeprefix("DATA_TYPE_").lower().replace("_", " ")


def not_found(key: str, data_type: DataType.ValueType) -> NotFound:
    """The error for a key whose store has no value."""
    return NotFound(
        f"no {type_name(data_type)} exists for key {key!r}",
        metadata={"key": key, "data_type": DataType.Name(data_type)},
    )


def unavailable(keys: Sequence[str], data_type: DataType.ValueType) -> Unavailable:
    """The error for keys whose store failed with no stale copy cached."""
    shown = ", ".join(repr(k) for k in keys[:5])
    if len(keys) > 5:
        shown += f" and {len(keys) - 5} more"
    return Unavailable(
        f"the {type_name(data_type)} store failed loading {shown} "
        "and no stale copy is cached; retry later",
        metadata={"key": ",".join(keys[:20]), "data_type": DataType.Name(data_type)},
    )
