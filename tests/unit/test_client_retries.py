"""The client's retry loop and service config, with fake attempts and a fake clock."""

from __future__ import annotations

import json

import grpc
import pytest

from mcprouter.client import IDEMPOTENT_METHODS, RetryPolicy, RouterClient, service_config
from mcprouter.client._config import channel_options
from mcprouter.client._retry import call_with_retries

POLICY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)


def failure(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


class Script:
    """Attempts that fail with the given codes in order, then answer "ok"."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.timeouts: list[float] = []
        self.now = 0.0
        self.waits: list[float] = []

    async def attempt(self, seconds: float) -> str:
        self.timeouts.append(seconds)
        if self.codes:
            raise failure(self.codes.pop(0))
        return "ok"

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def run(self, budget: float, policy: RetryPolicy | None = POLICY) -> str:
        return await call_with_retries(
            self.attempt,
            budget=budget,
            policy=policy,
            clock=self.clock,
            sleep=self.sleep,
            jitter=lambda bound: bound,  # the longest wait: the worst case
        )


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def test_unavailable_is_retried_with_growing_backoff_in_one_deadline() -> None:
    script = Script(UNAVAILABLE, UNAVAILABLE)
    assert await script.run(budget=5.0) == "ok"
    assert len(script.timeouts) == 3
    assert script.waits == [pytest.approx(0.1), pytest.approx(0.2)]
    # Every attempt gets what is left of the one deadline.
    assert script.timeouts == [pytest.approx(5.0), pytest.approx(4.9), pytest.approx(4.7)]


async def test_attempts_stop_at_max_attempts() -> None:
    script = Script(*[UNAVAILABLE] * 10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await script.run(budget=60.0)
    assert caught.value.code() == UNAVAILABLE
    assert len(script.timeouts) == POLICY.max_attempts


async def test_no_retry_starts_when_its_backoff_would_pass_the_deadline() -> None:
    script = Script(*[UNAVAILABLE] * 10)
    with pytest.raises(grpc.aio.AioRpcError):
        await script.run(budget=0.25)  # waits 0.1, then 0.2 would pass 0.25
    assert len(script.timeouts) == 2


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
async def test_only_unavailable_is_retried(code: grpc.StatusCode) -> None:
    script = Script(code)
    with pytest.raises(grpc.aio.AioRpcError):
        await script.run(budget=5.0)
    assert len(script.timeouts) == 1


async def test_no_policy_means_one_attempt() -> None:
    script = Script(UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError):
        await script.run(budget=5.0, policy=None)
    assert len(script.timeouts) == 1


def test_retry_policy_bounds() -> None:
    assert [POLICY.backoff_bound(n) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0]
    )
    for bad in (
        {"max_attempts": 1},
        {"max_attempts": 6},
        {"initial_backoff": 0.0},
        {"initial_backoff": 2.0, "max_backoff": 1.0},
        {"multiplier": 0.5},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_service_config_retries_idempotent_rpcs_on_unavailable_only() -> None:
    config = service_config(POLICY)
    (method_config,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == set(IDEMPOTENT_METHODS)
    assert ("mcprouter.v1.RouterService", "RouteData") not in names
    retry = method_config["retryPolicy"]
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert retry["maxAttempts"] == POLICY.max_attempts
    assert (retry["initialBackoff"], retry["maxBackoff"]) == ("0.100s", "1.000s")
    options = dict(channel_options(POLICY, None))
    assert json.loads(options["grpc.service_config"]) == config
    assert options["grpc.enable_retries"] == 1
    assert "grpc.service_config" not in dict(channel_options(None, None))


async def test_invalidate_needs_exactly_one_target() -> None:
    async with RouterClient.connect("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="exactly one"):
            await client.invalidate()
        with pytest.raises(ValueError, match="pattern, experiment_id"):
            await client.invalidate(pattern="metrics:x:*", experiment_id="x")


def test_track_events_and_reads_are_resent_upserts_are_not() -> None:
    from mcprouter.client import Event, Experiment, UserProfile
    from mcprouter.client import _operations as ops

    assert ops.track_events(Event(event_id="e")).retryable
    assert ops.get_experiment("e").retryable and ops.search("c", [1.0], 1, None).retryable
    assert not ops.upsert_experiment(Experiment()).retryable
    assert not ops.upsert_user_profile(UserProfile()).retryable
    assert not ops.upsert_embeddings("c", []).retryable


def test_sync_loop_retries_unavailable_like_the_async_one() -> None:
    from mcprouter.client._retry import call_with_retries_sync

    codes = [UNAVAILABLE, UNAVAILABLE]
    waits: list[float] = []
    now = [0.0]

    def attempt(seconds: float) -> str:
        if codes:
            raise failure(codes.pop(0))
        return "ok"

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    result = call_with_retries_sync(
        attempt,
        budget=5.0,
        policy=POLICY,
        clock=lambda: now[0],
        sleep=sleep,
        jitter=lambda bound: bound,
    )
    assert result == "ok" and waits == [0.1, 0.2]


def test_request_id_is_made_once_per_call_or_taken_from_the_caller() -> None:
    from mcprouter.client._calls import with_request_id

    metadata, rid = with_request_id((("authorization", "Bearer t"),), None)
    assert dict(metadata)["x-request-id"] == rid and len(rid) == 16
    metadata, rid = with_request_id((), (("x-request-id", "mine"),))
    assert rid == "mine" and metadata == (("x-request-id", "mine"),)
