"""Pure logic of the cache-aside core, driven with fakes (no Redis)."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcprouter.server.cache import (
    SCHEMA_VERSION,
    CachePolicy,
    CircuitBreaker,
    SingleFlight,
    decode,
    encode,
    xfetch_due,
)
from mcprouter.server.cache.envelope import encode_answer
from mcprouter.server.cache.served import not_found, unavailable
from mcprouter.server.errors import NotFound, Unavailable
from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope
from mcprouter.v1.experiment_pb2 import Experiment
from mcprouter.v1.serve_status_pb2 import DataType
from tests.fakes import FakeClock, FixedRandom

EXPERIMENT = DataType.DATA_TYPE_EXPERIMENT


# -- circuit breaker -----------------------------------------------------------------


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=2.0, clock=clock)
    assert breaker.state == "closed"
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(1.99)
    assert not breaker.allow()
    assert breaker.state == "open"


def test_breaker_half_open_admits_one_probe_and_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(10))


def test_breaker_failed_probe_reopens_and_restarts_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=2.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(2.5)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(1.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_breaker_probe_that_never_reports_expires() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()  # the probe's caller is cancelled and never reports
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()  # a new probe, the breaker cannot stick half-open


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(reset_timeout=-1)


# -- XFetch -----------------------------------------------------------------------------


def test_xfetch_refreshes_near_expiry_with_small_draw() -> None:
    # -ln(0.01) * 2 s * beta 1 = 9.2 s of head start; 1 s before expiry is inside it.
    assert xfetch_due(
        now=99.0, fresh_until=100.0, load_duration=2.0, beta=1.0, rng=FixedRandom(0.01)
    )
    # Far from expiry: 50 s is more than the 9.2 s head start.
    assert not xfetch_due(
        now=50.0, fresh_until=100.0, load_duration=2.0, beta=1.0, rng=FixedRandom(0.01)
    )


def test_xfetch_never_when_disabled_or_already_expired() -> None:
    rng = FixedRandom(1e-12)
    assert not xfetch_due(now=99.9, fresh_until=100.0, load_duration=5.0, beta=0.0, rng=rng)
    assert not xfetch_due(now=100.0, fresh_until=100.0, load_duration=5.0, beta=1.0, rng=rng)


def test_xfetch_zero_draw_refreshes() -> None:
    assert xfetch_due(now=0.0, fresh_until=1e9, load_duration=0.1, beta=1.0, rng=FixedRandom(0.0))


@given(
    now=st.floats(0, 1e6),
    ahead=st.floats(1e-6, 1e6),
    load_duration=st.floats(0, 100),
    beta=st.floats(0, 10),
    u=st.floats(1e-300, 0.999999),
)
def test_xfetch_matches_the_formula(
    now: float, ahead: float, load_duration: float, beta: float, u: float
) -> None:
    fresh_until = now + ahead
    due = xfetch_due(
        now=now, fresh_until=fresh_until, load_duration=load_duration, beta=beta, rng=FixedRandom(u)
    )
    if beta == 0:
        assert not due
    else:
        assert due == (now - load_duration * beta * math.log(u) >= fresh_until)


@given(
    now=st.floats(0, 1e6),
    load_duration=st.floats(0, 100),
    beta=st.floats(0.01, 10),
    u=st.floats(1e-300, 0.999999),
)
def test_xfetch_is_monotonic_in_time(
    now: float, load_duration: float, beta: float, u: float
) -> None:
    # Once a draw says "refresh", any later moment before expiry says so too.
    fresh_until = now + 10.0
    due_now = xfetch_due(
        now=now, fresh_until=fresh_until, load_duration=load_duration, beta=beta, rng=FixedRandom(u)
    )
    due_later = xfetch_due(
        now=now + 5.0,
        fresh_until=fresh_until,
        load_duration=load_duration,
        beta=beta,
        rng=FixedRandom(u),
    )
    assert due_later or not due_now


# -- policy, jitter and TTLs ------------------------------------------------------------


@given(
    fresh_ttl=st.floats(0.001, 1e6),
    jitter=st.floats(0, 2),
    stale_ttl=st.floats(0, 1e5),
    seed=st.integers(0, 2**32),
)
def test_jitter_stays_within_bounds(
    fresh_ttl: float, jitter: float, stale_ttl: float, seed: int
) -> None:
    policy = CachePolicy(EXPERIMENT, fresh_ttl=fresh_ttl, jitter=jitter, stale_ttl=stale_ttl)
    fresh = policy.fresh_seconds(random.Random(seed))
    assert fresh_ttl <= fresh <= fresh_ttl * (1 + jitter) * (1 + 1e-12)
    ttl_ms = policy.entry_ttl_ms(fresh)
    # The key outlives fresh_until by the stale window, never less.
    assert ttl_ms >= (fresh + stale_ttl) * 1000
    assert ttl_ms <= (fresh + stale_ttl) * 1000 + 1


def test_jitter_spreads_fresh_times() -> None:
    policy = CachePolicy(EXPERIMENT, fresh_ttl=100.0, jitter=0.1)
    rng = random.Random(1)
    draws = [policy.fresh_seconds(rng) for _ in range(200)]
    assert min(draws) >= 100.0
    assert max(draws) <= 110.0
    assert len(set(draws)) > 100


def test_zero_jitter_is_exact() -> None:
    policy = CachePolicy(EXPERIMENT, fresh_ttl=60.0, jitter=0.0, stale_ttl=10.0)
    fresh = policy.fresh_seconds(random.Random(3))
    assert fresh == 60.0
    assert policy.entry_ttl_ms(fresh) == 70_000
    assert policy.negative_ttl_ms() == 30_000


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fresh_ttl": 0.0}, "fresh_ttl"),
        ({"fresh_ttl": math.inf}, "fresh_ttl"),
        ({"stale_ttl": -1.0}, "stale_ttl"),
        ({"negative_ttl": 0.0}, "negative_ttl"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
        ({"xfetch_beta": -1.0}, "xfetch_beta"),
        ({"lease_ttl_ms": 0}, "lease_ttl_ms"),
        ({"lease_wait_ms": -1}, "lease_wait_ms"),
        ({"data_type": DataType.DATA_TYPE_UNSPECIFIED}, "data_type"),
    ],
)
def test_policy_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"data_type": EXPERIMENT, "fresh_ttl": 60.0, **changes}
    with pytest.raises(ValueError, match=message):
        CachePolicy(**arguments)  # type: ignore[arg-type]


def test_policy_is_frozen_with_documented_defaults() -> None:
    policy = CachePolicy(EXPERIMENT, fresh_ttl=86400.0)
    assert (policy.stale_ttl, policy.negative_ttl, policy.jitter) == (3600.0, 30.0, 0.1)
    assert (policy.lease_ttl_ms, policy.lease_wait_ms, policy.xfetch_beta) == (2000, 300, 1.0)
    assert policy.enabled
    with pytest.raises(FrozenInstanceError):
        policy.fresh_ttl = 1.0  # type: ignore[misc]


# -- envelope ---------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    value = Experiment(experiment_id="exp-1", name="Checkout", version=3)
    raw = encode(
        EXPERIMENT,
        value.SerializeToString(),
        stored_at=1_700_000_000.25,
        fresh_until=1_700_086_400.5,
        load_duration=0.0125,
    )
    entry = decode(raw, EXPERIMENT)
    assert entry is not None
    assert Experiment.FromString(entry.payload) == value
    assert not entry.not_found
    assert entry.stored_at == pytest.approx(1_700_000_000.25)
    assert entry.fresh_until == pytest.approx(1_700_086_400.5)
    assert entry.load_duration == pytest.approx(0.0125)
    assert entry.is_fresh(1_700_086_400.4)
    assert not entry.is_fresh(1_700_086_400.5)
    envelope = CacheEnvelope.FromString(raw)
    assert envelope.schema_version == SCHEMA_VERSION == 1
    assert envelope.data_type == EXPERIMENT


def test_negative_envelope_round_trip() -> None:
    raw = encode(EXPERIMENT, None, stored_at=10.0, fresh_until=40.0, load_duration=0.0)
    entry = decode(raw, EXPERIMENT)
    assert entry is not None
    assert entry.not_found
    assert entry.payload == b""


def test_envelope_rejects_what_it_cannot_trust() -> None:
    good = encode(EXPERIMENT, b"", stored_at=1.0, fresh_until=2.0, load_duration=0.0)
    assert decode(None, EXPERIMENT) is None
    assert decode(good.decode("latin-1"), EXPERIMENT) is None  # decode_responses=True client
    assert decode(good, DataType.DATA_TYPE_USER_PROFILE) is None
    assert decode(b"\xff\xff\xff\xff", EXPERIMENT) is None
    future = CacheEnvelope.FromString(good)
    future.schema_version = 2
    assert decode(future.SerializeToString(), EXPERIMENT) is None
    no_expiry = CacheEnvelope(data_type=EXPERIMENT, schema_version=SCHEMA_VERSION)
    assert decode(no_expiry.SerializeToString(), EXPERIMENT) is None


@given(st.binary(max_size=200))
def test_envelope_decode_never_raises(raw: bytes) -> None:
    entry = decode(raw, EXPERIMENT)
    assert entry is None or isinstance(entry.fresh_until, float)


def test_encode_answer_uses_the_policy_ttls() -> None:
    policy = CachePolicy(EXPERIMENT, fresh_ttl=100.0, stale_ttl=50.0, jitter=0.5, negative_ttl=7)
    blob, ttl_ms, until = encode_answer(
        policy, b"x", now=1000.0, load_duration=0.2, rng=FixedRandom(0.5)
    )
    entry = decode(blob, EXPERIMENT)
    assert entry is not None
    assert entry.fresh_until == pytest.approx(1125.0) == until  # 100 * uniform(1, 1.5) at 0.5
    assert ttl_ms == 175_000
    blob, ttl_ms, until = encode_answer(
        policy, None, now=1000.0, load_duration=0.2, rng=FixedRandom(0.5)
    )
    entry = decode(blob, EXPERIMENT)
    assert entry is not None
    assert entry.not_found
    assert entry.fresh_until == pytest.approx(1007.0) == until
    assert ttl_ms == 7000


# -- errors -----------------------------------------------------------------------------


def test_errors_name_the_key_and_the_data_type() -> None:
    missing = not_found("user:u1:profile", DataType.DATA_TYPE_USER_PROFILE)
    assert isinstance(missing, NotFound)
    assert "user:u1:profile" in missing.message
    assert "user profile" in missing.message
    down = unavailable([f"experiment:e{i}" for i in range(7)], EXPERIMENT)
    assert isinstance(down, Unavailable)
    assert "experiment store" in down.message
    assert "'experiment:e0'" in down.message
    assert "and 2 more" in down.message
    assert down.metadata["data_type"] == "DATA_TYPE_EXPERIMENT"


# -- single-flight ----------------------------------------------------------------------


async def test_single_flight_shares_one_call() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    waiters = [asyncio.create_task(flights.do("k", work)) for _ in range(20)]
    await asyncio.sleep(0)
    assert "k" in flights
    gate.set()
    assert await asyncio.gather(*waiters) == [42] * 20
    assert calls == 1
    await asyncio.sleep(0)
    assert "k" not in flights


async def test_single_flight_shares_the_exception_and_survives_cancelled_callers() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise RuntimeError("store down")

    first = asyncio.create_task(flights.do("k", work))
    await asyncio.sleep(0)
    second = asyncio.create_task(flights.do("k", work))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    with pytest.raises(RuntimeError, match="store down"):
        await second


async def test_single_flight_forget_starts_a_new_load() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()
    results = iter([1, 2])

    async def work() -> int:
        await gate.wait()
        return next(results)

    old, started = flights.start("k", work)
    assert started
    flights.forget("k")
    assert not flights.is_current("k", old)
    new, started = flights.start("k", work)
    assert started
    assert flights.is_current("k", new)
    gate.set()
    assert {await old, await new} == {1, 2}
