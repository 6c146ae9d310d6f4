"""The Python client SDK (``mcprouter.client``) against a live server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from mcprouter.client import (
    ERROR_DOMAIN,
    Aborted,
    DataType,
    EmbeddingItem,
    Event,
    Experiment,
    ExperimentStatus,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    RouterClient,
    ServeStatus,
    SyncRouterClient,
    Unavailable,
    UserProfile,
    Variant,
    current_hour,
    status_name,
)
from mcprouter.v1 import router_service_pb2 as rs
from tests.e2e.conftest import Launcher

pytestmark = pytest.mark.e2e

FRESH = ServeStatus.SERVE_STATUS_FRESH
CACHED = ServeStatus.SERVE_STATUS_CACHED
STORED = ServeStatus.SERVE_STATUS_STORED
DUPLICATE = ServeStatus.SERVE_STATUS_DUPLICATE


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records the method of every client-side attempt (service-config retries are below it)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        self.methods.append(method.decode() if isinstance(method, bytes) else method)
        return await continuation(client_call_details, request)

    def count(self, method: str) -> int:
        return sum(1 for m in self.methods if m.endswith("/" + method))


@pytest.fixture
async def client(server_target: str) -> AsyncIterator[RouterClient]:
    async with RouterClient.connect(server_target, default_timeout=10.0) as sdk:
        yield sdk


def experiment(experiment_id: str, **fields: Any) -> Experiment:
    return Experiment(
        experiment_id=experiment_id,
        name=fields.pop("name", "SDK test"),
        status=fields.pop("status", ExperimentStatus.EXPERIMENT_STATUS_RUNNING),
        variants=[Variant(name="control", weight=50), Variant(name="treatment", weight=50)],
        **fields,
    )


async def test_experiment_upsert_then_fresh_then_cached(client: RouterClient) -> None:
    exp_id = unique("sdk-exp")
    stored = await client.upsert_experiment(experiment(exp_id))
    assert stored.status == STORED and stored.status_name == "STORED"
    assert stored.value.version == 1

    first = await client.get_experiment(exp_id)
    second = await client.get_experiment(exp_id)
    assert (first.status_name, second.status_name) == ("FRESH", "CACHED")
    assert not first.from_cache and second.from_cache
    assert first.cache_key == second.cache_key == f"experiment:{exp_id}"
    assert second.value == first.value
    assert [v.name for v in second.value.variants] == ["control", "treatment"]
    assert second.stored_at is not None and second.stored_at <= datetime.now(UTC)

    updated = await client.upsert_experiment(experiment(exp_id, name="renamed", version=1))
    assert updated.value.version == 2
    assert (await client.get_experiment(exp_id)).value.name == "renamed"  # write invalidated

    with pytest.raises(Aborted) as caught:
        await client.upsert_experiment(experiment(exp_id, version=1))
    assert caught.value.domain == ERROR_DOMAIN and caught.value.reason


async def test_assignment_and_profile(client: RouterClient) -> None:
    exp_id, user_id = unique("sdk-asg"), unique("sdk-user")
    await client.upsert_experiment(experiment(exp_id))
    first = await client.get_assignment(exp_id, user_id)
    second = await client.get_assignment(exp_id, user_id)
    assert (first.status, second.status) == (FRESH, CACHED)
    assert first.value.variant in {"control", "treatment"}
    assert second.value.variant == first.value.variant
    assert first.cache_key == f"assignment:{exp_id}:{user_id}"

    profile = await client.upsert_user_profile(
        UserProfile(user_id=user_id, attributes={"country": "NL", "plan": "pro"})
    )
    assert profile.status == STORED and profile.value.version == 1
    first_profile = await client.get_user_profile(user_id)
    second_profile = await client.get_user_profile(user_id)
    assert (first_profile.status, second_profile.status) == (FRESH, CACHED)
    assert dict(second_profile.value.attributes) == {"country": "NL", "plan": "pro"}
    assert second_profile.cache_key == f"user:{user_id}:profile"


async def test_events_metrics_and_analytics(client: RouterClient) -> None:
    exp_id = unique("sdk-ev")
    await client.upsert_experiment(experiment(exp_id))
    now = datetime.now(UTC)

    def event(event_id: str, user: str, variant: str, kind: str, value: float = 0.0) -> Event:
        ev = Event(
            event_id=event_id,
            experiment_id=exp_id,
            user_id=user,
            variant=variant,
            event_type=kind,
            value=value,
        )
        ev.timestamp.FromDatetime(now)
        return ev

    single = event(unique("ev"), "u1", "treatment", "conversion", 4.0)
    first = await client.track_events(single)
    assert [(o.event_id, o.status) for o in first.value.outcomes] == [(single.event_id, STORED)]
    again = await client.track_events(single)
    assert again.value.outcomes[0].status == DUPLICATE
    assert (again.value.stored, again.value.duplicates) == (0, 1)

    batch = [
        single,
        event(unique("ev"), "u1", "treatment", "exposure"),
        event(unique("ev"), "u2", "control", "exposure"),
        event(unique("ev"), "u2", "control", "conversion", 1.5),
    ]
    result = (await client.track_events(batch)).value
    assert [status_name(o.status) for o in result.outcomes] == [
        "DUPLICATE",
        "STORED",
        "STORED",
        "STORED",
    ]
    assert [o.event_id for o in result.outcomes] == [e.event_id for e in batch]

    # The open hour is served from real-time counters: always FRESH, never cached.
    metrics = await client.get_event_metrics(exp_id, "treatment", "conversion")
    assert metrics.status == FRESH
    assert (metrics.value.count, metrics.value.sum, metrics.value.unique_users) == (1, 4.0, 1)
    assert metrics.value.hour.ToDatetime(tzinfo=UTC) == current_hour()
    assert not metrics.value.hour_closed

    # A closed hour is read from ClickHouse through the cache.
    closed_hour = current_hour() - timedelta(hours=2)
    late = event(unique("ev"), "u3", "treatment", "conversion", 2.0)
    late.timestamp.FromDatetime(closed_hour + timedelta(minutes=10))
    assert (await client.track_events(late)).value.stored == 1
    loaded = await client.get_event_metrics(exp_id, "treatment", "conversion", closed_hour)
    second = await client.get_event_metrics(exp_id, "treatment", "conversion", closed_hour)
    assert (loaded.status, second.status) == (FRESH, CACHED)
    assert (second.value.count, second.value.sum, second.value.hour_closed) == (1, 2.0, True)

    analytics = await client.get_analytics(exp_id)
    assert {v.variant for v in analytics.value.variants} == {"control", "treatment"}
    assert analytics.cache_key.startswith(f"analytics:{exp_id}:")
    assert (await client.get_analytics(exp_id)).status == CACHED


async def test_embeddings_then_search(client: RouterClient) -> None:
    collection = unique("sdk-col")
    written = await client.upsert_embeddings(
        collection,
        [
            EmbeddingItem(id="h1", embedding=[1.0, 0.0, 0.0], document="bigger button"),
            EmbeddingItem(id="h2", embedding=[0.0, 1.0, 0.0], document="shorter form"),
        ],
    )
    assert written.status == STORED and written.value.upserted == 2
    first = await client.search(collection, [0.9, 0.1, 0.0], k=1)
    second = await client.search(collection, [0.9, 0.1, 0.0], k=1)
    assert (first.status, second.status) == (FRESH, CACHED)
    assert [(h.id, h.document) for h in second.value.hits] == [("h1", "bigger button")]
    assert first.cache_key.startswith(f"search:{collection}:")
    assert await client.invalidate(collection=collection) >= 1
    assert (await client.search(collection, [0.9, 0.1, 0.0], k=1)).status == FRESH


async def test_get_cached_invalidate_stats_and_health(client: RouterClient) -> None:
    exp_id, user_id = unique("sdk-cache"), unique("sdk-user")
    before = await client.stats()
    await client.upsert_experiment(experiment(exp_id))
    await client.get_experiment(exp_id)
    key = f"experiment:{exp_id}"
    cached = await client.get_cached([key, f"experiment:{exp_id}-absent"])
    assert (cached.hits, cached.misses) == (1, 1)
    hit, miss = cached.entries
    assert hit.hit and hit.data_type == DataType.DATA_TYPE_EXPERIMENT
    assert hit.experiment.experiment_id == exp_id and hit.ttl_remaining.seconds > 0
    assert not miss.hit
    assert (await client.get_cached(key)).hits == 1  # a single key works too

    closed_hour = current_hour() - timedelta(hours=3)
    for variant in ("control", "treatment"):
        await client.get_event_metrics(exp_id, variant, "clicks", closed_hour)
    assert await client.invalidate(pattern=f"metrics:{exp_id}:*") == 2
    assert await client.invalidate(keys=[key]) == 1
    assert await client.invalidate(keys=key) == 0
    await client.get_experiment(exp_id)
    assert await client.invalidate(experiment_id=exp_id) == 1  # only its experiment key
    assert (await client.get_experiment(exp_id)).status == FRESH
    await client.upsert_user_profile(UserProfile(user_id=user_id))
    await client.get_user_profile(user_id)
    assert await client.invalidate(user_id=user_id) == 1

    # The server is shared: its counters grew by at least this test's own work
    # (exactly 2 + 1 + 0 + 1 + 1 keys removed, 15 data-path calls, counted above).
    stats = await client.stats()
    assert 0.0 < stats.hit_rate <= 1.0
    assert stats.invalidations - before.invalidations >= 5
    assert stats.total_operations - before.total_operations >= 15
    assert {s.data_type for s in stats.data_types} >= {DataType.DATA_TYPE_EXPERIMENT}

    assert await client.health() == "SERVING"
    assert await client.health("mcprouter.v1.RouterService") == "SERVING"
    assert await client.health("postgres") == "SERVING"
    with pytest.raises(NotFound):
        await client.health("no-such-service")


async def test_bad_id_is_invalid_argument_naming_the_field(client: RouterClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.get_experiment("bad id*")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.domain) == ("INVALID_ID", ERROR_DOMAIN)
    assert [v.field for v in error.field_violations] == ["get_experiment.experiment_id"]
    assert error.field_violations[0].description
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


def test_sync_client_same_surface_against_the_live_server(server_target: str) -> None:
    experiment_id = unique("sdk-sync")
    with SyncRouterClient.connect(server_target, default_timeout=10.0) as sdk:
        assert sdk.health() == "SERVING"
        stored = sdk.upsert_experiment(experiment(experiment_id))
        assert stored.status == STORED and stored.value.version == 1
        assert sdk.get_experiment(experiment_id).value.experiment_id == experiment_id
        assert sdk.get_experiment(experiment_id).status == CACHED
        assert sdk.get_cached(f"experiment:{experiment_id}").entries[0].hit
        assert sdk.invalidate(experiment_id=experiment_id) == 1
        with pytest.raises(NotFound) as caught:
            sdk.get_experiment(unique("sdk-missing"), metadata=[("x-request-id", "sync-rid-1")])
        assert caught.value.reason == "EXPERIMENT_NOT_FOUND"
        assert caught.value.request_id == "sync-rid-1"  # echoed by the server
        assert str(caught.value).startswith("NOT_FOUND (EXPERIMENT_NOT_FOUND): ")
    public = set(dir(RouterClient)) - {"__aenter__", "__aexit__"}
    assert {n for n in public if not n.startswith("_")} == {
        n for n in dir(SyncRouterClient) if not n.startswith("_")
    }


async def test_missing_experiment_is_not_found(client: RouterClient) -> None:
    with pytest.raises(NotFound) as caught:
        await client.get_experiment(unique("sdk-missing"))
    assert caught.value.domain == ERROR_DOMAIN and caught.value.reason


async def test_reads_are_retried_against_a_stopped_server_writes_are_not(
    launch_server: Launcher,
) -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    counter = CountingInterceptor()
    with launch_server("sdk-down") as server:
        async with RouterClient.connect(server.target, retry=policy, interceptors=[counter]) as sdk:
            assert await sdk.health() == "SERVING"
            server.stop()
            counter.methods.clear()

            with pytest.raises(Unavailable) as caught:
                await sdk.get_experiment("sdk-any", timeout=5.0)
            assert counter.count("RouteData") == policy.max_attempts
            assert caught.value.reason == ""  # produced by the gRPC runtime, not the server

            counter.methods.clear()
            with pytest.raises(Unavailable):
                await sdk.upsert_experiment(experiment("sdk-any"), timeout=5.0)
            assert counter.count("RouteData") == 1

            # Events are deduplicated by id, so a batch is resent like a read.
            counter.methods.clear()
            with pytest.raises(Unavailable) as caught:
                await sdk.track_events(
                    Event(
                        event_id="ev-1",
                        experiment_id="sdk-any",
                        user_id="u",
                        variant="control",
                        event_type="conversion",
                    ),
                    timeout=5.0,
                )
            assert counter.count("RouteData") == policy.max_attempts
            assert len(caught.value.request_id) == 16  # the one the client sent

            with pytest.raises(Unavailable):
                await sdk.stats(timeout=5.0)


class FlakyRouter:
    """An in-process RouterService that fails each method ``failures`` times first."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.authorization: list[str] = []
        self.request_ids: list[str] = []

    async def _flaky(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        metadata = dict(context.invocation_metadata() or ())
        self.authorization.append(metadata.get("authorization", ""))
        self.request_ids.append(metadata.get("x-request-id", ""))
        if self.calls[name] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    async def route_data(
        self, request: rs.RouteDataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rs.RouteDataResponse:
        await self._flaky("RouteData", context)
        if request.WhichOneof("operation") == "get_experiment":
            response = rs.RouteDataResponse(status=FRESH, cache_key="experiment:x")
            response.experiment.experiment_id = request.get_experiment.experiment_id
            return response
        response = rs.RouteDataResponse(status=STORED)
        response.track_events_result.stored = 1
        return response

    async def stats(
        self, request: rs.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rs.StatsResponse:
        await self._flaky("Stats", context)
        return rs.StatsResponse(hit_rate=0.5)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(behavior: Any, request_type: Any, response_type: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            "mcprouter.v1.RouterService",
            {
                "RouteData": unary(self.route_data, rs.RouteDataRequest, rs.RouteDataResponse),
                "Stats": unary(self.stats, rs.StatsRequest, rs.StatsResponse),
            },
        )


@contextlib.asynccontextmanager
async def serving(router: FlakyRouter) -> AsyncIterator[tuple[FlakyRouter, str]]:
    """``router`` on a real grpc.aio server, port 0."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((router.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield router, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyRouter, str]]:
    async with serving(FlakyRouter(failures=2)) as running:
        yield running


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[FlakyRouter, str]]:
    """A server that never fails and records each call's metadata."""
    async with serving(FlakyRouter(failures=0)) as running:
        yield running


async def test_token_is_sent_as_bearer_metadata(
    recorder: tuple[FlakyRouter, str], server_target: str
) -> None:
    router, target = recorder
    async with RouterClient.connect(target, token="s3cret") as sdk:
        assert (await sdk.get_experiment("exp-1")).value.experiment_id == "exp-1"
        assert (await sdk.stats()).hit_rate == 0.5
    async with RouterClient.connect(target) as anonymous:
        await anonymous.get_experiment("exp-2")
    # What the server received on the wire, per call, in order.
    assert router.authorization == ["Bearer s3cret", "Bearer s3cret", ""]

    # The live server (no tokens configured) ignores it: calls still work.
    exp_id = unique("sdk-token")
    async with RouterClient.connect(server_target, token="s3cret") as sdk:
        assert await sdk.health() == "SERVING"
        assert (await sdk.upsert_experiment(experiment(exp_id))).status == STORED
        assert (await sdk.get_experiment(exp_id)).value.experiment_id == exp_id


async def test_a_read_succeeds_after_transient_unavailable(
    flaky: tuple[FlakyRouter, str],
) -> None:
    router, target = flaky
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    counter = CountingInterceptor()
    async with RouterClient.connect(
        target, retry=policy, interceptors=[counter], token="t0k"
    ) as sdk:
        answer = await sdk.get_experiment("exp-1")
        assert answer.value.experiment_id == "exp-1" and answer.status == FRESH
        assert router.calls["RouteData"] == 3 == counter.count("RouteData")
        assert set(router.authorization) == {"Bearer t0k"}

        # Stats is retried by the channel's service config: one call for the
        # interceptor, three attempts on the server.
        stats = await sdk.stats()
        assert stats.hit_rate == 0.5
        assert (router.calls["Stats"], counter.count("Stats")) == (3, 1)


async def test_an_upsert_is_not_retried_on_unavailable(flaky: tuple[FlakyRouter, str]) -> None:
    router, target = flaky
    async with RouterClient.connect(target) as sdk:
        with pytest.raises(Unavailable) as caught:
            await sdk.upsert_experiment(experiment("x"))
        assert caught.value.message == "warming up"
    assert router.calls["RouteData"] == 1


async def test_track_events_is_resent_on_unavailable(flaky: tuple[FlakyRouter, str]) -> None:
    router, target = flaky
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    async with RouterClient.connect(target, retry=policy) as sdk:
        answer = await sdk.track_events([Event(event_id="e", experiment_id="x")])
    assert answer.value.stored == 1
    assert router.calls["RouteData"] == 3
    # Every attempt of one call carries the same request id.
    assert len(set(router.request_ids)) == 1


async def test_the_sync_client_retries_like_the_async_one(
    flaky: tuple[FlakyRouter, str],
) -> None:
    router, target = flaky
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)

    def blocking() -> None:  # in a thread: the in-process server needs this event loop
        with SyncRouterClient.connect(target, retry=policy, token="t0k") as sdk:
            assert sdk.get_experiment("exp-1").value.experiment_id == "exp-1"
            assert sdk.stats().hit_rate == 0.5

    await asyncio.to_thread(blocking)
    assert (router.calls["RouteData"], router.calls["Stats"]) == (3, 3)
    assert set(router.authorization) == {"Bearer t0k"}


async def test_retries_can_be_switched_off(flaky: tuple[FlakyRouter, str]) -> None:
    router, target = flaky
    async with RouterClient.connect(target, retry=None) as sdk:
        with pytest.raises(Unavailable):
            await sdk.get_experiment("exp-1")
        with pytest.raises(Unavailable):
            await sdk.stats()
    assert (router.calls["RouteData"], router.calls["Stats"]) == (1, 1)
