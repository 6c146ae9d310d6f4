"""The in-process L1: bounded, short-lived, and never admits a value an
invalidation has overtaken."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcprouter.server.cache.feed import decode_message, encode_message
from mcprouter.server.cache.local import LocalCache
from mcprouter.v1.experiment_pb2 import Experiment
from tests.fakes import FakeClock


def active_cache(clock: FakeClock, max_entries: int = 3, max_age: float = 5.0) -> LocalCache:
    cache = LocalCache(max_entries=max_entries, max_age=max_age, clock=clock)
    cache.set_coherent(True)
    return cache


def put(cache: LocalCache, key: str, clock: FakeClock, fresh_for: float = 60.0) -> None:
    cache.put(
        key,
        Experiment(experiment_id=key),
        stored_at=clock(),
        fresh_until=clock() + fresh_for,
        generation=cache.generation,
    )


def test_serves_nothing_until_the_feed_is_connected() -> None:
    clock = FakeClock()
    cache = LocalCache(max_entries=10, max_age=5.0, clock=clock)
    put(cache, "experiment:a", clock)
    assert cache.get("experiment:a") is None
    cache.set_coherent(True)
    put(cache, "experiment:a", clock)
    assert cache.get("experiment:a") is not None
    cache.set_coherent(False)  # feed lost: everything goes
    cache.set_coherent(True)
    assert cache.get("experiment:a") is None


def test_entries_expire_at_max_age_or_freshness_whichever_first() -> None:
    clock = FakeClock()
    cache = active_cache(clock)
    put(cache, "experiment:long", clock, fresh_for=60)
    put(cache, "experiment:short", clock, fresh_for=1)
    clock.advance(2)
    assert cache.get("experiment:short") is None
    assert cache.get("experiment:long") is not None
    clock.advance(3.5)
    assert cache.get("experiment:long") is None


def test_an_invalidation_during_the_read_keeps_the_value_out() -> None:
    clock = FakeClock()
    cache = active_cache(clock)
    generation = cache.generation  # the read starts
    cache.drop(["experiment:a"])  # a message overtakes the reply
    cache.put(
        "experiment:a", Experiment(), stored_at=0, fresh_until=clock() + 60, generation=generation
    )
    assert cache.get("experiment:a") is None


def test_drop_by_key_and_pattern_and_lru_bound() -> None:
    clock = FakeClock()
    cache = active_cache(clock, max_entries=3)
    for key in ("metrics:e1:a:m:1", "metrics:e1:b:m:1", "metrics:e2:a:m:1"):
        put(cache, key, clock)
    cache.drop(patterns=["metrics:e1:*"])
    assert [cache.get(k) is None for k in ("metrics:e1:a:m:1", "metrics:e2:a:m:1")] == [
        True,
        False,
    ]
    for key in ("experiment:1", "experiment:2", "experiment:3"):
        put(cache, key, clock)
    assert len(cache) == 3
    assert cache.get("metrics:e2:a:m:1") is None  # least recently used went first


def test_disabled_configuration_holds_nothing() -> None:
    clock = FakeClock()
    cache = active_cache(clock, max_entries=0)
    put(cache, "experiment:a", clock)
    assert not cache.configured
    assert cache.get("experiment:a") is None


def test_messages_round_trip() -> None:
    raw = encode_message(["experiment:a"], ["metrics:a:*"], origin="abc")
    assert decode_message(raw) == (["experiment:a"], ["metrics:a:*"], "abc")


@given(st.binary(max_size=200))
def test_malformed_messages_are_rejected_not_raised(raw: bytes) -> None:
    decoded = decode_message(raw)
    assert decoded is None or all(isinstance(x, list) for x in decoded[:2])


def test_messages_with_wrong_shapes_are_rejected() -> None:
    for raw in (b"[]", b'{"keys": "a", "patterns": []}', b'{"keys": [1], "patterns": []}', b"{"):
        assert decode_message(raw) is None


def test_memory_is_bounded_by_bytes_not_only_by_entries() -> None:
    clock = FakeClock()
    cache = LocalCache(max_entries=10_000, max_age=5.0, clock=clock, max_bytes=64 * 1024)
    cache.set_coherent(True)
    big = Experiment(experiment_id="x", description="d" * 4000)  # ~4 KB each
    for i in range(100):
        cache.put(
            f"experiment:{i}",
            big,
            stored_at=clock(),
            fresh_until=clock() + 60,
            generation=cache.generation,
        )
    assert cache.bytes <= 64 * 1024
    assert 10 <= len(cache) < 20  # the oldest went first
    assert cache.get("experiment:99") is not None
    assert cache.get("experiment:0") is None
    huge = Experiment(experiment_id="h", description="d" * 9000)  # over an eighth of the budget
    cache.put("experiment:h", huge, stored_at=clock(), fresh_until=clock() + 60, generation=0)
    assert cache.get("experiment:h") is None
    cache.drop(keys=[f"experiment:{i}" for i in range(100)])
    assert cache.bytes == 0 and len(cache) == 0
