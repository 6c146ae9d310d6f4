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

from mcprouter.server.errors import FieldViolation, InvalidArgument

ID_MAX_LENGTH = 128
ID_CHARSET_DESCRIPTION = "1..128 characters from [A-Za-z0-9_.-]"
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


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

    def add(self, field: str, description: str) -> None:
        """Record one violation."""
        self._items.append(FieldViolation(field, description))

    def identifier(self, field: str, value: str) -> None:
        """Require ``value`` to be a valid identifier."""
        if not value:
            self.add(field, "is required")
        elif not is_identifier(value):
            self.add(field, f"must be {ID_CHARSET_DESCRIPTION}")

    def identifiers(self, field: str, values: Iterable[str]) -> None:
        """Require every element of ``values`` to be a valid identifier."""
        for index, value in enumerate(values):
            self.identifier(f"{field}[{index}]", value)

    def count(self, field: str, size: int, low: int, high: int) -> None:
        """Require a repeated field to hold ``low..high`` elements."""
        if not low <= size <= high:
            self.add(field, f"must hold {low}..{high} elements, got {size}")

    def finite(self, field: str, value: float) -> None:
        """Require a finite number (no NaN or infinity)."""
        if not math.isfinite(value):
            self.add(field, "must be a finite number")

    def text(self, field: str, value: str, max_length: int) -> None:
        """Bound free text; refuse NUL, which PostgreSQL text and jsonb cannot hold."""
        if len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters, got {len(value)}")
        elif "\x00" in value:
            self.add(field, "must not contain NUL (U+0000) characters")

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        """Raise one ``InvalidArgument`` carrying every violation recorded."""
        if self._items:
            raise InvalidArgument(list(self._items))
