"""Typed filter -> Chroma ``where``, Chroma's name rules, and canonical search keys."""

from __future__ import annotations

import pytest

from mcprouter.server.chroma.filters import (
    collection_name_problem,
    metadata_from_chroma,
    metadata_to_chroma,
    to_where,
)
from mcprouter.server.chroma.search_keys import (
    canonical_query,
    generation_key,
    parse_generation,
    query_digest,
    search_cache_key,
)
from mcprouter.server.errors import InvalidArgument
from mcprouter.server.keys import KeySpace
from mcprouter.v1 import search_pb2 as search

F = "semantic_search.filter"


def s(v: str) -> search.MetadataValue:
    return search.MetadataValue(string_value=v)


def i(v: int) -> search.MetadataValue:
    return search.MetadataValue(int_value=v)


def d(v: float) -> search.MetadataValue:
    return search.MetadataValue(double_value=v)


def b(v: bool) -> search.MetadataValue:
    return search.MetadataValue(bool_value=v)


def cond(
    key: str,
    op: search.FilterOperator.ValueType,
    value: search.MetadataValue | None = None,
    values: list[search.MetadataValue] | None = None,
) -> search.MetadataCondition:
    c = search.MetadataCondition(key=key, operator=op, values=values or [])
    if value is not None:
        c.value.CopyFrom(value)
    return c


def flt(*conditions: search.MetadataCondition) -> search.MetadataFilter:
    return search.MetadataFilter(conditions=list(conditions))


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


# --- filter -> where ---------------------------------------------------------


def test_no_filter_is_no_where() -> None:
    assert to_where(None, F) is None
    assert to_where(search.MetadataFilter(), F) is None


def test_one_condition_is_not_wrapped_in_and() -> None:
    # Chroma rejects an $and of fewer than two documents.
    assert to_where(flt(cond("team", search.FILTER_OPERATOR_EQ, s("growth"))), F) == {
        "team": {"$eq": "growth"}
    }


@pytest.mark.parametrize(
    ("op", "chroma_op", "value", "python"),
    [
        (search.FILTER_OPERATOR_EQ, "$eq", b(True), True),
        (search.FILTER_OPERATOR_NE, "$ne", s("x"), "x"),
        (search.FILTER_OPERATOR_GT, "$gt", i(3), 3),
        (search.FILTER_OPERATOR_GTE, "$gte", d(0.5), 0.5),
        (search.FILTER_OPERATOR_LT, "$lt", i(-2), -2),
        (search.FILTER_OPERATOR_LTE, "$lte", d(1e9), 1e9),
    ],
)
def test_scalar_operators(
    op: search.FilterOperator.ValueType, chroma_op: str, value: search.MetadataValue, python: object
) -> None:
    where = to_where(flt(cond("f", op, value)), F)
    assert where == {"f": {chroma_op: python}}
    assert type(where["f"][chroma_op]) is type(python)  # type: ignore[index]


def test_many_conditions_are_anded_with_lists() -> None:
    where = to_where(
        flt(
            cond("team", search.FILTER_OPERATOR_IN, values=[s("a"), s("b")]),
            cond("year", search.FILTER_OPERATOR_NOT_IN, values=[i(2020)]),
            cond("score", search.FILTER_OPERATOR_GTE, d(0.25)),
        ),
        F,
    )
    assert where == {
        "$and": [
            {"team": {"$in": ["a", "b"]}},
            {"year": {"$nin": [2020]}},
            {"score": {"$gte": 0.25}},
        ]
    }


@pytest.mark.parametrize("value", [s("a"), b(True)])
@pytest.mark.parametrize(
    "op",
    [
        search.FILTER_OPERATOR_GT,
        search.FILTER_OPERATOR_GTE,
        search.FILTER_OPERATOR_LT,
        search.FILTER_OPERATOR_LTE,
    ],
)
def test_ordering_on_string_or_bool_is_invalid(
    op: search.FilterOperator.ValueType, value: search.MetadataValue
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        to_where(flt(cond("ok", search.FILTER_OPERATOR_EQ, i(1)), cond("f", op, value)), F)
    assert list(violations(exc)) == [f"{F}.conditions[1].value"]
    assert "numbers only" in violations(exc)[f"{F}.conditions[1].value"]


@pytest.mark.parametrize(
    ("condition", "field"),
    [
        (cond("f", search.FILTER_OPERATOR_UNSPECIFIED, i(1)), "operator"),
        (cond("f", 99, i(1)), "operator"),  # type: ignore[arg-type]
        (cond("f", search.FILTER_OPERATOR_EQ), "value"),
        (cond("f", search.FILTER_OPERATOR_EQ, search.MetadataValue()), "value"),
        (cond("f", search.FILTER_OPERATOR_EQ, d(float("nan"))), "value"),
        (cond("f", search.FILTER_OPERATOR_IN), "values"),
        (cond("f", search.FILTER_OPERATOR_IN, values=[s("a"), i(1)]), "values"),
        (cond("f", search.FILTER_OPERATOR_IN, values=[i(1), d(1.0)]), "values"),
        (cond("f", search.FILTER_OPERATOR_NOT_IN, values=[d(float("inf"))]), "values[0]"),
        (cond("$and", search.FILTER_OPERATOR_EQ, i(1)), "key"),
        (cond("", search.FILTER_OPERATOR_EQ, i(1)), "key"),
    ],
)
def test_bad_conditions_name_the_field(condition: search.MetadataCondition, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        to_where(flt(condition), F)
    assert list(violations(exc)) == [f"{F}.conditions[0].{field}"]


def test_too_many_conditions() -> None:
    with pytest.raises(InvalidArgument) as exc:
        to_where(flt(*[cond(f"k{n}", search.FILTER_OPERATOR_EQ, i(n)) for n in range(17)]), F)
    assert list(violations(exc)) == [f"{F}.conditions"]


# --- Chroma collection names ---------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "experiments", "a.b-c_d", "A1" + "x" * 126, "1.2.3"])
def test_good_collection_names(name: str) -> None:
    assert collection_name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", "ab", "-abc", "abc-", "_abc", "abc.", "a..b", "10.0.0.1", "a b c", "x" * 513]
)
def test_bad_collection_names(name: str) -> None:
    assert collection_name_problem(name) is not None


# --- metadata both ways --------------------------------------------------------


def test_metadata_round_trip_keeps_types() -> None:
    proto = {"s": s("x"), "i": i(7), "d": d(0.5), "b": b(False)}
    chroma = metadata_to_chroma(proto)
    assert chroma == {"s": "x", "i": 7, "d": 0.5, "b": False}
    hit = search.SearchHit()
    metadata_from_chroma(chroma, hit.metadata)
    assert dict(hit.metadata) == proto
    assert metadata_to_chroma({}) is None


# --- canonical query, digest and keys -----------------------------------------


def key(
    *,
    collection: str = "docs",
    generation: int = 0,
    embedding: list[float] | None = None,
    k: int = 5,
    filter_: search.MetadataFilter | None = None,
) -> str:
    vector = [0.25, -0.5, 1.0] if embedding is None else embedding
    return search_cache_key(collection, generation, vector, k, filter_)


def test_same_query_same_key() -> None:
    f1 = flt(cond("team", search.FILTER_OPERATOR_EQ, s("a")))
    f2 = flt(cond("team", search.FILTER_OPERATOR_EQ, s("a")))
    assert key(filter_=f1) == key(filter_=f2)
    assert key() == key()
    assert key().startswith("search:docs:")
    assert len(key().rsplit(":", 1)[1]) == 64


def test_semantically_equal_filters_share_a_key() -> None:
    a = cond("team", search.FILTER_OPERATOR_IN, values=[s("x"), s("y"), s("x")])
    b_ = cond("year", search.FILTER_OPERATOR_GT, i(2020))
    reordered = cond("team", search.FILTER_OPERATOR_IN, values=[s("y"), s("x")])
    assert key(filter_=flt(a, b_)) == key(filter_=flt(b_, reordered))
    assert key(filter_=flt(a, a)) == key(filter_=flt(a))
    # No filter and an empty filter are the same search.
    assert key(filter_=search.MetadataFilter()) == key()


def test_negative_zero_is_zero() -> None:
    assert key(embedding=[0.0, 1.0]) == key(embedding=[-0.0, 1.0])


@pytest.mark.parametrize(
    "changed",
    [
        {"collection": "docs2"},
        {"generation": 1},
        {"embedding": [0.25, -0.5, 1.0000001]},
        {"embedding": [0.25, -0.5, 1.0, 0.0]},
        {"embedding": [0.25, -0.5]},
        {"k": 6},
        {"filter_": flt(cond("team", search.FILTER_OPERATOR_EQ, s("a")))},
        {"filter_": flt(cond("team", search.FILTER_OPERATOR_NE, s("a")))},
        {"filter_": flt(cond("team", search.FILTER_OPERATOR_EQ, s("b")))},
        {"filter_": flt(cond("team2", search.FILTER_OPERATOR_EQ, s("a")))},
        {"filter_": flt(cond("n", search.FILTER_OPERATOR_EQ, i(1)))},
        {"filter_": flt(cond("n", search.FILTER_OPERATOR_EQ, d(1.0)))},
        {"filter_": flt(cond("n", search.FILTER_OPERATOR_EQ, s("1")))},
        {"filter_": flt(cond("n", search.FILTER_OPERATOR_EQ, b(True)))},
        {"filter_": flt(cond("n", search.FILTER_OPERATOR_IN, values=[i(1)]))},
    ],
)
def test_any_change_changes_the_key(changed: dict[str, object]) -> None:
    assert key(**changed) != key()  # type: ignore[arg-type]


def test_every_variant_is_distinct() -> None:
    variants = [
        key(filter_=flt(cond("n", search.FILTER_OPERATOR_EQ, v))) for v in (i(1), d(1.0), s("1"))
    ]
    variants += [key(generation=g) for g in range(3)]
    assert len(set(variants)) == len(variants)


def test_canonical_bytes_layout() -> None:
    raw = canonical_query("docs", 7, [1.0], 3, None)
    # tag, name + NUL, generation u64, k u32, dimension u32, one float32 (1.0 = 3f800000).
    assert raw == (
        b"mcprouter.search.v1\x00docs\x00"
        + (7).to_bytes(8, "big")
        + (3).to_bytes(4, "big")
        + (1).to_bytes(4, "big")
        + bytes.fromhex("3f800000")
    )
    assert query_digest("docs", 7, [1.0], 3, None) == query_digest("docs", 7, [1.0], 3, None)


def test_generation_key_and_parsing() -> None:
    assert generation_key(KeySpace("prod:"), "docs") == "prod:_gen:{docs}"
    assert parse_generation(None) == 0
    assert parse_generation(b"12") == 12
