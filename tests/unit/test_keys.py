"""Key building and validation: no id can reach into another key or family."""

from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcprouter.server import keys
from mcprouter.server.validation import is_identifier
from mcprouter.v1.serve_status_pb2 import DataType

ID_ALPHABET = string.ascii_letters + string.digits + "_.-"
ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128)


@given(ids)
def test_valid_ids_are_accepted(value: str) -> None:
    assert is_identifier(value)


@given(st.text(min_size=1, max_size=64).filter(lambda s: any(c not in ID_ALPHABET for c in s)))
def test_ids_with_any_foreign_character_are_rejected(value: str) -> None:
    assert not is_identifier(value)


@pytest.mark.parametrize("value", ["", "a" * 129, "a:b", "a*", "a?", "a[b]", "a\\b", "é", "a b"])
def test_hostile_ids_are_rejected(value: str) -> None:
    assert not is_identifier(value)


@given(ids, ids)
def test_built_keys_parse_back_to_their_family(exp: str, user: str) -> None:
    hour = datetime(2026, 1, 2, 3, tzinfo=UTC)
    assert keys.family_of(keys.experiment_key(exp)) == DataType.DATA_TYPE_EXPERIMENT
    assert keys.family_of(keys.assignment_key(exp, user)) == DataType.DATA_TYPE_ASSIGNMENT
    assert keys.family_of(keys.user_profile_key(user)) == DataType.DATA_TYPE_USER_PROFILE
    metrics = keys.event_metrics_key(exp, user, "clicks", hour)
    assert keys.family_of(metrics) == DataType.DATA_TYPE_EVENT_METRICS
    assert metrics.endswith(":2026010203")
    assert keys.analytics_key(exp, hour).endswith(":20260102")
    assert keys.key_problem(keys.assignment_key(exp, user)) is None


@given(ids)
def test_entity_patterns_stay_within_their_family(exp: str) -> None:
    for pattern in [*keys.experiment_patterns(exp), *keys.user_patterns(exp)]:
        assert keys.pattern_problem(pattern) is None
        assert pattern.split(":", 1)[0] in keys.PUBLIC_FAMILIES


@pytest.mark.parametrize(
    "pattern",
    [
        "*",
        "",
        "*:x",
        "exp*",
        "[a-z]*:x",
        "?xperiment:1",
        "unknown:*",
        "_dedup:*",
        "experiment",
        "metrics:a:" + "*" * 9,
        "metrics:" + "a" * 260,
        "metrics:a b",
        "metrics:a\\*",
        "metrics:[^a]",
    ],
)
def test_bad_patterns_are_rejected(pattern: str) -> None:
    assert keys.pattern_problem(pattern) is not None


@pytest.mark.parametrize(
    "pattern", ["experiment:*", "metrics:exp-1:*", "assignment:*:u1", "analytics:e?:2026*"]
)
def test_family_patterns_are_accepted(pattern: str) -> None:
    assert keys.pattern_problem(pattern) is None


@given(st.text(max_size=600))
def test_a_key_either_has_a_family_or_a_reason(key: str) -> None:
    problem = keys.key_problem(key)
    assert (problem is None) == (keys.family_of(key) is not None)
    if problem is None:
        assert not any(c in key for c in "*?[]\\ ")


def test_keyspace_prefixes_tags_and_strips() -> None:
    space = keys.KeySpace("prod:")
    assert space.redis_key("experiment:e1") == "prod:experiment:{e1}"
    assert space.client_key("prod:experiment:{e1}") == "experiment:e1"
    assert space.redis_key("metrics:e1:v:m:2026112910") == "prod:metrics:{e1}:v:m:2026112910"
    assert space.internal("dedup", "ev1") == "prod:_dedup:{ev1}"
    assert space.internal("invalidations") == "prod:_invalidations"
    assert keys.family_of("_dedup:ev1") is None


def test_a_key_its_lease_and_its_index_share_one_cluster_slot() -> None:
    from redis.crc import key_slot

    space = keys.KeySpace("prod:")
    key = "metrics:e1:v:m:2026112910"
    slots = {
        key_slot(k.encode())
        for k in (space.redis_key(key), space.lease(key), space.index("metrics", "e1"))
    }
    assert len(slots) == 1
    rt = space.internal("rt", "e1", "v", "m", "2026112910")
    assert key_slot(rt.encode()) == key_slot((rt + ":users").encode())


@given(
    st.lists(
        st.sampled_from(["e1", "e2", "e12", "x", "u1", "v", "m", "*", "?", "[e]"]),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.sampled_from(["e1", "e2", "e12", "x", "u1", "v", "m"]), min_size=1, max_size=4),
    st.sampled_from(sorted(keys.PUBLIC_FAMILIES)),
)
def test_the_redis_glob_of_a_pattern_finds_every_key_it_matches(
    pattern_parts: list[str], key_parts: list[str], family: str
) -> None:
    import fnmatch

    space = keys.KeySpace("ns:")
    pattern = ":".join([family, *pattern_parts])
    key = ":".join([family, *key_parts])
    if fnmatch.fnmatchcase(key, pattern):
        assert fnmatch.fnmatchcase(space.redis_key(key), space.redis_pattern(pattern))
    if space.pattern_is_exact(pattern):
        assert fnmatch.fnmatchcase(key, pattern) == fnmatch.fnmatchcase(
            space.redis_key(key), space.redis_pattern(pattern)
        )


@pytest.mark.parametrize("namespace", ["prod", "a:b:", "*:", "x" * 70 + ":"])
def test_bad_namespaces_are_rejected(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        keys.KeySpace(namespace)
