r"""Input checks shared by every RPC: identifiers, counts and numbers.

Identifiers become parts of cache keys, Redis glob patterns and query
parameters, so they are held to a conservative charset: ASCII letters,
digits, ``_``, ``.`` and ``-``, 1 to 128 characters. That excludes ``:`` (the
key separator) and every glob character (``* ? [ ] \\``), so no id can
reach into another key or widen a pattern.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Final

from mcprouter.server.errors import FieldViolation, InvalidArgument

ID_MAX_LENGTH = 128
ID_CHARSET_DESCRIPTION = "1..128 characters from [A-Za-z0-9_.-]"
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class Reason:
    """The ``reason`` of a bad-input violation, by the kind of field at fault.

    Stable UPPER_SNAKE names, documented in the contract (router_service.proto)
    so clients may branch on them; each violation carries one, and the error's
    ``ErrorInfo.reason`` is the first violation's.
    """

    MISSING_FIELD: Final = "MISSING_FIELD"  # required and empty / absent / too few elements
    INVALID_ID: Final = "INVALID_ID"  # an identifier outside [A-Za-z0-9_.-]{1,128}
    INVALID_TIMESTAMP: Final = "INVALID_TIMESTAMP"  # before 2000, > 1 h ahead, bad nanos
    HOUR_NOT_TRUNCATED: Final = "HOUR_NOT_TRUNCATED"  # metrics hour not on a UTC hour
    DAY_NOT_TRUNCATED: Final = "DAY_NOT_TRUNCATED"  # analytics day not on UTC midnight
    INVALID_EMBEDDING: Final = "INVALID_EMBEDDING"  # empty, too long, non-finite, dimension
    INVALID_NUMBER: Final = "INVALID_NUMBER"  # NaN or infinity where a number is stored
    OUT_OF_RANGE: Final = "OUT_OF_RANGE"  # a number outside its bounds (k, weight, version)
    TOO_MANY_ITEMS: Final = "TOO_MANY_ITEMS"  # a repeated field or map over its bound
    TEXT_TOO_LONG: Final = "TEXT_TOO_LONG"  # free text over its bound
    INVALID_ENUM: Final = "INVALID_ENUM"  # an enum value the operation does not accept
    DUPLICATE_ITEM: Final = "DUPLICATE_ITEM"  # the same name / id twice in one request
    INVALID_FILTER: Final = "INVALID_FILTER"  # a filter condition of the wrong type
    INVALID_KEY: Final = "INVALID_KEY"  # not a public cache key
    INVALID_PATTERN: Final = "INVALID_PATTERN"  # an invalidation pattern refused
    INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"  # anything else


def is_identifier(value: str) -> bool:
    """Tell whether ``value`` is a valid identifier."""
    return _ID_RE.fullmatch(value) is not None


class Violations:
    """Collects every field violation of one request before failing once.

    Reporting all bad fields at once spares a client one round trip per
    mistake.
    """

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str, reason: str = Reason.INVALID_ARGUMENT) -> None:
        """Record one violation of the kind ``reason``."""
        self._items.append(FieldViolation(field, description, reason))

    def required(self, field: str) -> None:
        """Record a required field that is missing."""
        self.add(field, "is required", Reason.MISSING_FIELD)

    def identifier(self, field: str, value: str) -> None:
        """Require ``value`` to be a valid identifier."""
        if not value:
            self.required(field)
        elif not is_identifier(value):
            self.add(field, f"must be {ID_CHARSET_DESCRIPTION}", Reason.INVALID_ID)

    def identifiers(self, field: str, values: Iterable[str]) -> None:
        """Require every element of ``values`` to be a valid identifier."""
        for index, value in enumerate(values):
            self.identifier(f"{field}[{index}]", value)

    def count(self, field: str, size: int, low: int, high: int) -> None:
        """Require a repeated field to hold ``low..high`` elements."""
        if not low <= size <= high:
            reason = Reason.TOO_MANY_ITEMS if size > high else Reason.MISSING_FIELD
            self.add(field, f"must hold {low}..{high} elements, got {size}", reason)

    def finite(self, field: str, value: float) -> None:
        """Require a finite number (no NaN or infinity)."""
        if not math.isfinite(value):
            self.add(field, "must be a finite number", Reason.INVALID_NUMBER)

    def text(self, field: str, value: str, max_length: int) -> None:
        """Bound free text; refuse NUL, which PostgreSQL text and jsonb cannot hold."""
        if len(value) > max_length:
            self.add(
                field,
                f"must be at most {max_length} characters, got {len(value)}",
                Reason.TEXT_TOO_LONG,
            )
        elif "\x00" in value:
            self.add(field, "must not contain NUL (U+0000) characters", Reason.INVALID_ARGUMENT)

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        """Raise one ``InvalidArgument`` carrying every violation recorded."""
        if self._items:
            raise InvalidArgument(list(self._items))
