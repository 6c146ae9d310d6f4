"""Assignment hashing: the published vectors, properties and the distribution."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcprouter.server.postgres.assignment import (
    BUCKETS,
    MAX_WEIGHT,
    assign,
    bucket_bounds,
    bucket_of,
    choose_variant,
)

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "assignment_test_vectors.json"

ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-",
    min_size=1,
    max_size=128,
)
salts = st.text(alphabet="0123456789abcdef", max_size=32)
weight_lists = st.lists(st.integers(min_value=1, max_value=MAX_WEIGHT), min_size=1, max_size=12)


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def _pairs(variants: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(v["name"], v["weight"]) for v in variants]


def _bucket_independently(salt: str, user_id: str) -> int:
    # A second reading of the spec (hex digits instead of bytes) so the JSON
    # is checked against the text of the algorithm, not only against itself.
    hexdigest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return int(hexdigest[:16], 16) % 10000


def test_vector_file_is_substantial() -> None:
    data = _load()
    assert len(data["cases"]) >= 50
    assert data["algorithm"]["buckets"] == BUCKETS
    assert any(len(c["variants"]) >= 3 for c in data["cases"])
    assert any(len({v["weight"] for v in c["variants"]}) > 1 for c in data["cases"])


@pytest.mark.parametrize("case", _load()["cases"], ids=lambda c: f"{c['salt']}:{c['user_id'][:20]}")
def test_reproduces_published_cases(case: dict[str, Any]) -> None:
    variants = _pairs(case["variants"])
    assert bucket_of(case["salt"], case["user_id"]) == case["bucket"]
    assert _bucket_independently(case["salt"], case["user_id"]) == case["bucket"]
    assert choose_variant(case["bucket"], variants) == case["variant"]
    assert assign(case["salt"], case["user_id"], variants) == (case["bucket"], case["variant"])


@pytest.mark.parametrize("case", _load()["choose_variant_cases"])
def test_reproduces_published_boundaries(case: dict[str, Any]) -> None:
    assert choose_variant(case["bucket"], _pairs(case["variants"])) == case["variant"]


def test_bounds_are_the_documented_floor_arithmetic() -> None:
    assert bucket_bounds([1, 2, 3]) == [1666, 5000, 10000]
    assert bucket_bounds([10000, 10000, 1]) == [4999, 9999, 10000]
    assert choose_variant(9998, [("a", 10000), ("b", 10000), ("c", 1)]) == "b"
    assert choose_variant(9999, [("a", 10000), ("b", 10000), ("c", 1)]) == "c"


@given(salt=salts, user_id=ids)
def test_bucket_in_range_and_deterministic(salt: str, user_id: str) -> None:
    bucket = bucket_of(salt, user_id)
    assert 0 <= bucket < BUCKETS
    assert bucket_of(salt, user_id) == bucket
    assert bucket == _bucket_independently(salt, user_id)


@given(bucket=st.integers(min_value=0, max_value=BUCKETS - 1), weights=weight_lists)
def test_choose_variant_matches_its_interval(bucket: int, weights: list[int]) -> None:
    variants = [(f"v{i}", w) for i, w in enumerate(weights)]
    chosen = choose_variant(bucket, variants)
    index = int(chosen[1:])
    bounds = bucket_bounds(weights)
    lower = bounds[index - 1] if index else 0
    assert lower <= bucket < bounds[index]
    assert bounds[-1] == BUCKETS
    assert bounds == sorted(bounds)


@given(weights=weight_lists)
def test_each_variant_owns_its_share_to_one_bucket(weights: list[int]) -> None:
    bounds = bucket_bounds(weights)
    total = sum(weights)
    lowers = [0, *bounds[:-1]]
    for weight, lower, upper in zip(weights, lowers, bounds, strict=True):
        # Floors of two cumulative sums differ from the exact share by < 1.
        assert abs((upper - lower) - BUCKETS * weight / total) < 1


@given(bucket=st.integers(min_value=0, max_value=BUCKETS - 1), weights=weight_lists)
def test_names_do_not_affect_the_choice(bucket: int, weights: list[int]) -> None:
    # Only weights and their order decide; names are labels.
    named = [(f"n{i}", w) for i, w in enumerate(weights)]
    renamed = [(f"other{i}", w) for i, w in enumerate(weights)]
    assert choose_variant(bucket, named)[1:] == choose_variant(bucket, renamed)[5:]


@pytest.mark.parametrize(
    "variants",
    [[], [("a", 0), ("b", 1)], [("a", MAX_WEIGHT + 1)], [("a", -1)]],
)
def test_invalid_weights_are_rejected(variants: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError):
        choose_variant(0, variants)


@pytest.mark.parametrize("bucket", [-1, BUCKETS])
def test_out_of_range_bucket_is_rejected(bucket: int) -> None:
    with pytest.raises(ValueError):
        choose_variant(bucket, [("a", 1)])


@pytest.mark.parametrize(
    "variants",
    [
        [("control", 50), ("treatment", 50)],
        [("control", 90), ("treatment", 10)],
        [("a", 1), ("b", 2), ("c", 3), ("d", 4)],
    ],
)
def test_distribution_matches_weights(variants: list[tuple[str, int]]) -> None:
    # n = 100 000 users: a share p has binomial std sqrt(p(1-p)/n) <= 0.0016,
    # so a 0.01 tolerance is > 6 sigma (a false failure is ~1e-9 per variant),
    # while a real bias of a percent point would still be caught.
    n = 100_000
    counts = Counter(assign("distribution-salt", f"user-{i}", variants)[1] for i in range(n))
    total = sum(w for _, w in variants)
    for name, weight in variants:
        assert abs(counts[name] / n - weight / total) < 0.01, (name, counts)
