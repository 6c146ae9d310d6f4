"""Chroma-specific input rules and conversions between our protos and Chroma's values.

- ``collection_name_problem``: Chroma's collection name rules, which are
  stricter than our identifier check (3..512 characters, letters or digits
  at both ends, no ``..``, not an IPv4 address).
- ``to_where``: the typed ``MetadataFilter`` as Chroma's ``where`` document.
  The document is built only from typed fields (the operator is an enum, the
  key an identifier, the operands typed scalars), so a client can never pass
  an operator document of its own.
- ``metadata_to_chroma`` / ``metadata_from_chroma``: flat metadata both ways.

Every rule Chroma would reject is checked here first, so the caller gets
INVALID_ARGUMENT naming the field, not a store error.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from mcprouter.server.limits import MAX_FILTER_CONDITIONS, MAX_FILTER_VALUES
from mcprouter.server.validation import Reason, Violations, is_identifier
from mcprouter.v1 import search_pb2 as search

Scalar = str | int | float | bool
"""A metadata value as Chroma holds it."""
Where = dict[str, Any]
"""A Chroma ``where`` document."""

NAME_MIN_LENGTH = 3
NAME_MAX_LENGTH = 512
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]")

_OPERATORS: dict[search.FilterOperator.ValueType, str] = {
    search.FILTER_OPERATOR_EQ: "$eq",
    search.FILTER_OPERATOR_NE: "$ne",
    search.FILTER_OPERATOR_GT: "$gt",
    search.FILTER_OPERATOR_GTE: "$gte",
    search.FILTER_OPERATOR_LT: "$lt",
    search.FILTER_OPERATOR_LTE: "$lte",
    search.FILTER_OPERATOR_IN: "$in",
    search.FILTER_OPERATOR_NOT_IN: "$nin",
}
_ORDERING = {
    search.FILTER_OPERATOR_GT,
    search.FILTER_OPERATOR_GTE,
    search.FILTER_OPERATOR_LT,
    search.FILTER_OPERATOR_LTE,
}
_LISTS = {search.FILTER_OPERATOR_IN, search.FILTER_OPERATOR_NOT_IN}


def collection_name_problem(name: str) -> str | None:
    """Why Chroma would reject ``name`` as a collection name, or ``None``."""
    if not NAME_MIN_LENGTH <= len(name) <= NAME_MAX_LENGTH or not _NAME_RE.fullmatch(name):
        return (
            f"must be {NAME_MIN_LENGTH}..{NAME_MAX_LENGTH} characters from [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit (Chroma collection name rules)"
        )
    if ".." in name:
        return "must not contain two consecutive periods (Chroma collection name rules)"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return None
    return "must not be an IPv4 address (Chroma collection name rules)"


def check_collection(violations: Violations, field: str, name: str) -> None:
    """Record a violation unless ``name`` is an identifier Chroma accepts."""
    if not name:
        violations.required(field)
    elif not is_identifier(name):
        violations.add(field, "must be 3..128 characters from [A-Za-z0-9_.-]", Reason.INVALID_ID)
    elif problem := collection_name_problem(name):
        violations.add(field, problem, Reason.INVALID_ID)


def scalar(value: search.MetadataValue) -> Scalar | None:
    """The Python value of a ``MetadataValue``; ``None`` if no kind is set."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: Scalar = getattr(value, kind)
    return result


def _operand(violations: Violations, field: str, value: search.MetadataValue) -> Scalar | None:
    result = scalar(value)
    if result is None:
        violations.add(
            field,
            "must set one of string_value, int_value, double_value, bool_value",
            Reason.MISSING_FIELD,
        )
    elif isinstance(result, float) and not math.isfinite(result):
        violations.add(field, "must be a finite number", Reason.INVALID_NUMBER)
        return None
    return result


def _clause(violations: Violations, at: str, cond: search.MetadataCondition) -> Where | None:
    if not is_identifier(cond.key):
        violations.add(
            f"{at}.key", "must be 1..128 characters from [A-Za-z0-9_.-]", Reason.INVALID_ID
        )
        return None
    operator = _OPERATORS.get(cond.operator)
    if operator is None:
        violations.add(
            f"{at}.operator", "must be a known FILTER_OPERATOR_* value", Reason.INVALID_ENUM
        )
        return None
    if cond.operator in _LISTS:
        return _list_clause(violations, at, cond, operator)
    return _scalar_clause(violations, at, cond, operator)


def _scalar_clause(
    violations: Violations, at: str, cond: search.MetadataCondition, operator: str
) -> Where | None:
    if not cond.HasField("value"):
        violations.add(f"{at}.value", "is required for this operator", Reason.MISSING_FIELD)
        return None
    operand = _operand(violations, f"{at}.value", cond.value)
    if operand is None:
        return None
    if cond.operator in _ORDERING and isinstance(operand, str | bool):
        name = search.FilterOperator.Name(cond.operator)
        violations.add(
            f"{at}.value",
            f"{name} compares numbers only; use int_value or double_value "
            f"(got {cond.value.WhichOneof('kind')})",
            Reason.INVALID_FILTER,
        )
        return None
    return {cond.key: {operator: operand}}


def _list_clause(
    violations: Violations, at: str, cond: search.MetadataCondition, operator: str
) -> Where | None:
    if not 1 <= len(cond.values) <= MAX_FILTER_VALUES:
        violations.count(f"{at}.values", len(cond.values), 1, MAX_FILTER_VALUES)
        return None
    operands = [_operand(violations, f"{at}.values[{j}]", v) for j, v in enumerate(cond.values)]
    if any(o is None for o in operands):
        return None
    kinds = sorted({v.WhichOneof("kind") or "" for v in cond.values})
    if len(kinds) > 1:
        # Chroma requires one type per list (and compares 1 and 1.0 as different types).
        violations.add(
            f"{at}.values", f"must all have one type, got {', '.join(kinds)}", Reason.INVALID_FILTER
        )
        return None
    return {cond.key: {operator: operands}}


def to_where(flt: search.MetadataFilter | None, field: str) -> Where | None:
    """Translate a typed filter into Chroma's ``where`` document.

    Args:
        flt: The filter; ``None`` or no conditions means no filter.
        field: The filter's path in the request, for field violations
            (``semantic_search.filter``).

    Returns:
        ``None``, one condition's document, or ``{"$and": [...]}`` (Chroma
        rejects an ``$and`` of fewer than two documents).

    Raises:
        InvalidArgument: A condition is malformed, compares a string or a bool
            with an ordering operator, or mixes types in IN / NOT_IN.
    """
    if flt is None or not flt.conditions:
        return None
    violations = Violations()
    if len(flt.conditions) > MAX_FILTER_CONDITIONS:
        violations.count(f"{field}.conditions", len(flt.conditions), 1, MAX_FILTER_CONDITIONS)
        violations.raise_if_any()
    clauses = [
        _clause(violations, f"{field}.conditions[{i}]", cond)
        for i, cond in enumerate(flt.conditions)
    ]
    violations.raise_if_any()
    documents = [c for c in clauses if c is not None]
    return documents[0] if len(documents) == 1 else {"$and": documents}


def metadata_to_chroma(metadata: Mapping[str, search.MetadataValue]) -> dict[str, Scalar] | None:
    """Flat metadata for Chroma; ``None`` when empty (Chroma rejects ``{}``)."""
    result = {name: v for name, value in metadata.items() if (v := scalar(value)) is not None}
    return result or None


def metadata_from_chroma(
    raw: Mapping[str, Any] | None, into: MutableMapping[str, search.MetadataValue]
) -> None:
    """Copy Chroma metadata into a proto map, skipping values of other types."""
    for name, value in (raw or {}).items():
        # bool first: it is a subclass of int.
        if isinstance(value, bool):
            into[name].bool_value = value
        elif isinstance(value, int):
            into[name].int_value = value
        elif isinstance(value, float):
            into[name].double_value = value
        elif isinstance(value, str):
            into[name].string_value = value
