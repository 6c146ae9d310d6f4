"""``RouterClient``: the async client of ``mcprouter.v1.RouterService`` and its health service."""

# ``timeout=`` (seconds) is the gRPC Python convention for a call's deadline,
# which is what these methods pass on; asyncio.timeout() would not set one.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcprouter.client._config import RetryPolicy, TlsConfig, channel_options
from mcprouter.client._errors import Internal, Unavailable, from_rpc_error
from mcprouter.client._results import Served, served
from mcprouter.client._retry import call_with_retries
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Analytics, Event, EventMetrics, TrackEventsResult
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.search_pb2 import (
    EmbeddingItem,
    MetadataFilter,
    SearchResult,
    UpsertEmbeddingsResult,
)

R = TypeVar("R", bound=Message)
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY = RetryPolicy()


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)  # naive datetimes are taken as UTC
    return stamp


def current_hour() -> datetime:
    """The current UTC hour, truncated (what ``get_event_metrics`` wants)."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def today() -> datetime:
    """Midnight of the current UTC day (what ``get_analytics`` wants)."""
    return current_hour().replace(hour=0)


class RouterClient:
    """Async client of mcp-router: one typed method per operation.

    Every method takes a ``timeout`` (seconds, default ``default_timeout``)
    that bounds the whole call, retries included, and raises a
    ``RouterError`` subclass on failure. ``RouteData`` operations return a
    ``Served`` (value, ``status``, ``cache_key``, ``stored_at``); the other
    RPCs return their response message.

    Retries happen on ``UNAVAILABLE`` only and only for idempotent calls:
    the reads of ``RouteData`` (retried by this class, because one gRPC
    method carries reads and writes alike), and ``GetCached``,
    ``Invalidate``, ``Stats`` and health ``Check`` (retried by the channel's
    service config). Writes (``track_events``, upserts) are made once.

    Example:
        >>> async with RouterClient.connect("localhost:50051") as client:
        ...     served = await client.get_experiment("checkout-v2")
        ...     print(served.status_name, served.value.name)
        FRESH Checkout v2
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
        owns_channel: bool = False,
    ) -> None:
        """Use an existing channel; prefer ``RouterClient.connect``.

        Args:
            channel: The channel to call through. Service-config retries of
                the idempotent RPCs are whatever that channel was built with.
            default_timeout: Seconds a call may take when it names no timeout.
            retry: Retry policy of ``RouteData`` reads; ``None`` disables it.
            metadata: Sent with every call (e.g. an ``authorization`` header).
            owns_channel: Close ``channel`` in ``close()`` (``connect`` sets it).
        """
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        self._channel = channel
        self._stub = rs_grpc.RouterServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._default_timeout = default_timeout
        self._retry = retry
        self._metadata = tuple(metadata)
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> RouterClient:
        """Open a channel to ``target`` (``host:port``); use it as ``async with``.

        The channel connects lazily, on the first call (see ``wait_until_ready``).

        Args:
            target: ``host:port`` of the server.
            token: Bearer token sent as ``authorization: Bearer <token>`` — as
                call credentials over TLS, as plain metadata without TLS.
            tls: TLS settings; ``None`` is a plaintext channel.
            default_timeout: Seconds a call may take when it names no timeout.
            retry: Retry policy of the idempotent calls; ``None`` disables retries.
            interceptors: grpc.aio client interceptors (they see every
                client-side attempt; service-config retries happen below them).
            options: Extra channel options, e.g. ``("grpc.max_receive_message_length", n)``.

        Example:
            >>> async with RouterClient.connect(
            ...     "router.internal:443", tls=TlsConfig(ca="ca.pem"), token=token
            ... ) as client:
            ...     print(await client.health())
            SERVING
        """
        channel_opts = channel_options(retry, tls, tuple(options))
        metadata: tuple[tuple[str, str], ...] = ()
        if tls is None:
            if token is not None:
                metadata = (("authorization", f"Bearer {token}"),)
            channel = grpc.aio.insecure_channel(
                target, options=channel_opts, interceptors=interceptors
            )
        else:
            credentials = tls.credentials()
            if token is not None:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.access_token_call_credentials(token)
                )
            channel = grpc.aio.secure_channel(
                target, credentials, options=channel_opts, interceptors=interceptors
            )
        return cls(
            channel,
            default_timeout=default_timeout,
            retry=retry,
            metadata=metadata,
            owns_channel=True,
        )

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if this client opened it (calls in flight are cancelled)."""
        if self._owns_channel:
            await self._channel.close(None)

    async def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait until the channel is connected, or raise ``Unavailable`` after ``timeout``."""
        from asyncio import timeout as time_limit

        try:
            async with time_limit(self._budget(timeout)):
                await self._channel.channel_ready()
        except TimeoutError as exc:
            raise Unavailable("the channel did not connect in time") from exc

    # -- RouteData: reads (retried on UNAVAILABLE) ---------------------------------------

    async def get_experiment(
        self, experiment_id: str, *, timeout: float | None = None
    ) -> Served[Experiment]:
        """Read an experiment (PostgreSQL; cached as ``experiment:{id}``).

        Raises:
            NotFound: No such experiment.
            InvalidArgument: A malformed id.

        Example:
            >>> (await client.get_experiment("checkout-v2")).value.variants[0].name
            'control'
        """
        op = rs.GetExperimentOperation(experiment_id=experiment_id)
        response = await self._route(rs.RouteDataRequest(get_experiment=op), True, timeout)
        return served(response, _result(response, "experiment", response.experiment))

    async def get_assignment(
        self, experiment_id: str, user_id: str, *, timeout: float | None = None
    ) -> Served[Assignment]:
        """The user's sticky variant, assigned on first request (experiment must be RUNNING).

        Example:
            >>> (await client.get_assignment("checkout-v2", "user-42")).value.variant
            'treatment'
        """
        op = rs.GetAssignmentOperation(experiment_id=experiment_id, user_id=user_id)
        response = await self._route(rs.RouteDataRequest(get_assignment=op), True, timeout)
        return served(response, _result(response, "assignment", response.assignment))

    async def get_user_profile(
        self, user_id: str, *, timeout: float | None = None
    ) -> Served[UserProfile]:
        """Read a user profile (PostgreSQL; cached as ``user:{id}:profile``)."""
        op = rs.GetUserProfileOperation(user_id=user_id)
        response = await self._route(rs.RouteDataRequest(get_user_profile=op), True, timeout)
        return served(response, _result(response, "user_profile", response.user_profile))

    async def get_event_metrics(
        self,
        experiment_id: str,
        variant: str,
        metric: str,
        hour: datetime | None = None,
        *,
        timeout: float | None = None,
    ) -> Served[EventMetrics]:
        """Count, sum and unique users of one metric (an event type) in one UTC hour.

        Args:
            experiment_id: The experiment.
            variant: The variant.
            metric: The event type aggregated, e.g. ``"conversion"``.
            hour: The hour, truncated (naive means UTC); default: the current hour.
            timeout: Seconds for the call.

        Example:
            >>> m = (await client.get_event_metrics("checkout-v2", "treatment", "conversion")).value
            >>> m.count, m.sum, m.unique_users
            (12, 113.5, 11)
        """
        op = rs.GetEventMetricsOperation(
            experiment_id=experiment_id,
            variant=variant,
            metric=metric,
            hour=_timestamp(hour or current_hour()),
        )
        response = await self._route(rs.RouteDataRequest(get_event_metrics=op), True, timeout)
        return served(response, _result(response, "event_metrics", response.event_metrics))

    async def get_analytics(
        self, experiment_id: str, day: datetime | None = None, *, timeout: float | None = None
    ) -> Served[Analytics]:
        """Per-variant conversion, lift and significance for one UTC day (default: today).

        Example:
            >>> for v in (await client.get_analytics("checkout-v2")).value.variants:
            ...     print(v.variant, v.conversion_rate, v.p_value)
        """
        op = rs.GetAnalyticsOperation(experiment_id=experiment_id, day=_timestamp(day or today()))
        response = await self._route(rs.RouteDataRequest(get_analytics=op), True, timeout)
        return served(response, _result(response, "analytics", response.analytics))

    async def search(
        self,
        collection: str,
        embedding: Sequence[float],
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        timeout: float | None = None,
    ) -> Served[SearchResult]:
        """The ``k`` nearest items of ``collection`` to ``embedding`` (ChromaDB, cached).

        Example:
            >>> hits = (await client.search("hypotheses", [0.9, 0.1, 0.0], k=1)).value.hits
            >>> hits[0].id, hits[0].document
            ('h1', 'bigger button')
        """
        op = rs.SemanticSearchOperation(
            collection=collection, embedding=list(embedding), k=k, filter=filter
        )
        response = await self._route(rs.RouteDataRequest(semantic_search=op), True, timeout)
        return served(response, _result(response, "search_result", response.search_result))

    # -- RouteData: writes (made once) ----------------------------------------------------

    async def upsert_experiment(
        self, experiment: Experiment, *, timeout: float | None = None
    ) -> Served[Experiment]:
        """Create (``version=0``) or update (the ``version`` last read) an experiment.

        Not retried: if a timed-out attempt had committed, a retry would fail
        with ``Aborted`` (its version is stale by then).

        Raises:
            Aborted: ``experiment.version`` is not the stored version.

        Example:
            >>> stored = await client.upsert_experiment(Experiment(
            ...     experiment_id="checkout-v2", name="Checkout v2",
            ...     status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
            ...     variants=[Variant(name="control", weight=50),
            ...               Variant(name="treatment", weight=50)]))
            >>> stored.status_name, stored.value.version
            ('STORED', 1)
        """
        op = rs.UpsertExperimentOperation(experiment=experiment)
        response = await self._route(rs.RouteDataRequest(upsert_experiment=op), False, timeout)
        return served(response, _result(response, "experiment", response.experiment))

    async def upsert_user_profile(
        self, profile: UserProfile, *, timeout: float | None = None
    ) -> Served[UserProfile]:
        """Create (``version=0``) or update (the ``version`` last read) a user profile.

        Example:
            >>> await client.upsert_user_profile(
            ...     UserProfile(user_id="user-42", attributes={"country": "NL"}))
        """
        op = rs.UpsertUserProfileOperation(profile=profile)
        response = await self._route(rs.RouteDataRequest(upsert_user_profile=op), False, timeout)
        return served(response, _result(response, "user_profile", response.user_profile))

    async def track_events(
        self, events: Event | Iterable[Event], *, timeout: float | None = None
    ) -> Served[TrackEventsResult]:
        """Record one event or a batch (1..1000); each is STORED once, then DUPLICATE.

        Not retried here: events are deduplicated by ``event_id``, so a caller
        may safely resend the same batch after ``Unavailable``/``DeadlineExceeded``
        — outcomes then say which events were new.

        Returns:
            ``value.outcomes`` in request order (``event_id`` and ``status``),
            and the ``stored`` / ``duplicates`` counts.

        Example:
            >>> result = (await client.track_events(event)).value
            >>> status_name(result.outcomes[0].status)
            'STORED'
        """
        batch = [events] if isinstance(events, Event) else list(events)
        op = rs.TrackEventsOperation(events=batch)
        response = await self._route(rs.RouteDataRequest(track_events=op), False, timeout)
        return served(
            response, _result(response, "track_events_result", response.track_events_result)
        )

    async def upsert_embeddings(
        self, collection: str, items: Iterable[EmbeddingItem], *, timeout: float | None = None
    ) -> Served[UpsertEmbeddingsResult]:
        """Write vectors into ``collection`` (created on first write); cached searches renew.

        Example:
            >>> await client.upsert_embeddings("hypotheses", [
            ...     EmbeddingItem(id="h1", embedding=[1, 0, 0], document="bigger button")])
        """
        op = rs.UpsertEmbeddingsOperation(collection=collection, items=list(items))
        response = await self._route(rs.RouteDataRequest(upsert_embeddings=op), False, timeout)
        return served(
            response,
            _result(response, "upsert_embeddings_result", response.upsert_embeddings_result),
        )

    # -- the cache itself and the server (service-config retries) ------------------------

    async def get_cached(
        self, keys: str | Iterable[str], *, timeout: float | None = None
    ) -> rs.GetCachedResponse:
        """Read keys straight from the cache (no store behind it); misses are reported.

        Example:
            >>> entry = (await client.get_cached("experiment:checkout-v2")).entries[0]
            >>> entry.hit, entry.ttl_remaining.ToTimedelta()
            (True, datetime.timedelta(seconds=86117))
        """
        key_list = [keys] if isinstance(keys, str) else list(keys)
        request = rs.GetCachedRequest(keys=key_list)
        return await self._call(self._stub.GetCached, request, timeout)

    async def invalidate(
        self,
        *,
        keys: str | Iterable[str] | None = None,
        pattern: str | None = None,
        experiment_id: str | None = None,
        user_id: str | None = None,
        collection: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Remove cache entries; name exactly one target. Returns how many keys went.

        Args:
            keys: These keys (one or many).
            pattern: A glob inside one key family, e.g. ``"metrics:checkout-v2:*"``.
            experiment_id: Everything derived from the experiment.
            user_id: Everything derived from the user.
            collection: Every cached search of a collection.
            timeout: Seconds for the call.

        Raises:
            ValueError: Not exactly one target was given (nothing is sent).

        Example:
            >>> await client.invalidate(pattern="metrics:checkout-v2:*")
            4
        """
        targets = {
            "keys": keys,
            "pattern": pattern,
            "experiment_id": experiment_id,
            "user_id": user_id,
            "collection": collection,
        }
        given = [name for name, value in targets.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "invalidate needs exactly one of keys=, pattern=, experiment_id=, "
                f"user_id=, collection= (got {', '.join(given) or 'none'})"
            )
        if keys is not None:
            key_list = [keys] if isinstance(keys, str) else list(keys)
            request = rs.InvalidateRequest(keys=rs.KeyList(keys=key_list))
        elif pattern is not None:
            request = rs.InvalidateRequest(pattern=pattern)
        elif experiment_id is not None:
            request = rs.InvalidateRequest(experiment_id=experiment_id)
        elif user_id is not None:
            request = rs.InvalidateRequest(user_id=user_id)
        else:
            request = rs.InvalidateRequest(collection=str(collection))
        response = await self._call(self._stub.Invalidate, request, timeout)
        return response.removed

    async def stats(self, *, timeout: float | None = None) -> rs.StatsResponse:
        """The server process's cache counters (hit rate, per data type, Redis usage)."""
        return await self._call(self._stub.Stats, rs.StatsRequest(), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Standard gRPC health ``Check``: ``"SERVING"``, ``"NOT_SERVING"``...

        Args:
            service: ``""`` for the server as a whole, or a backend name
                (``"redis"``, ``"postgres"``) or ``"mcprouter.v1.RouterService"``.
            timeout: Seconds for the call.

        Raises:
            NotFound: The server knows no such service name.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(self._health.Check, request, timeout)
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name

    # -- plumbing -------------------------------------------------------------------------

    def _budget(self, timeout: float | None) -> float:
        return self._default_timeout if timeout is None else timeout

    async def _route(
        self, request: rs.RouteDataRequest, idempotent: bool, timeout: float | None
    ) -> rs.RouteDataResponse:
        async def attempt(seconds: float) -> rs.RouteDataResponse:
            return await self._stub.RouteData(request, timeout=seconds, metadata=self._metadata)

        try:
            return await call_with_retries(
                attempt,
                budget=self._budget(timeout),
                policy=self._retry if idempotent else None,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def _call(
        self, method: Callable[..., Awaitable[R]], request: Message, timeout: float | None
    ) -> R:
        try:
            return await method(request, timeout=self._budget(timeout), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc


def _result(response: rs.RouteDataResponse, field: str, value: R) -> R:
    """``value`` if the response's ``result`` is ``field``; a protocol error otherwise."""
    actual = response.WhichOneof("result")
    if actual != field:
        raise Internal(f"the server answered {actual or 'nothing'} where {field} was expected")
    return value
