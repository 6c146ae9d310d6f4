"""``RouterClient``: the async client of ``mcprouter.v1.RouterService`` and its health service."""

# ``timeout=`` (seconds) is the gRPC Python convention for a call's deadline,
# which is what these methods pass on; asyncio.timeout() would not set one.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from mcprouter.client import _health
from mcprouter.client import _operations as ops
from mcprouter.client._calls import Metadata, credentials, with_request_id
from mcprouter.client._config import (
    DEFAULT_CHANNELS,
    RetryPolicy,
    TlsConfig,
    channel_options,
    pool_options,
)
from mcprouter.client._errors import Unavailable, from_rpc_error
from mcprouter.client._results import Served
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
T = TypeVar("T", bound=Message)
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY = RetryPolicy()


class RouterClient:
    """Async client of mcp-router: one typed method per operation.

    ``SyncRouterClient`` has the same methods, blocking. Every method takes a
    ``timeout`` (seconds, default ``default_timeout``) that bounds the whole
    call, retries included, and ``metadata`` (extra ``(key, value)`` pairs
    for this call only), and raises a ``RouterError`` subclass carrying the
    call's ``request_id``. ``RouteData`` operations return a ``Served``
    (value, ``status``, ``cache_key``, ``stored_at``); the other RPCs return
    their response message.

    Retries happen on ``UNAVAILABLE`` only, and only where a resend is safe:
    the reads of ``RouteData`` and ``track_events`` (the server deduplicates
    events by id, and answers ``UNAVAILABLE``/``EVENTS_IN_FLIGHT`` while an
    earlier attempt of the same events is pending), retried by this class
    because one gRPC method carries reads and writes alike; ``GetCached``,
    ``Invalidate``, ``Stats`` and health ``Check`` are retried by the
    channel's service config. The version-checked upserts and
    ``upsert_embeddings`` are sent once.

    Example:
        >>> async with RouterClient.connect("localhost:50051") as client:
        ...     served = await client.get_experiment("checkout-v2")
        ...     print(served.status_name, served.value.name)
        FRESH Checkout v2
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | Sequence[grpc.aio.Channel],
        *,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        metadata: Metadata = (),
        owns_channel: bool = False,
    ) -> None:
        """Use an existing channel; prefer ``RouterClient.connect``.

        Args:
            channel: The channel to call through, or several: calls take them
                in turn (round robin), a resent call the next one.
                Service-config retries of the idempotent RPCs are whatever
                the channels were built with.
            default_timeout: Seconds a call may take when it names no timeout.
            retry: Retry policy of ``RouteData`` reads and ``track_events``;
                ``None`` disables it.
            metadata: Sent with every call (e.g. an ``authorization`` header).
            owns_channel: Close the channels in ``close()`` (``connect`` sets it).
        """
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        channels = (channel,) if isinstance(channel, grpc.aio.Channel) else tuple(channel)
        if not channels:
            raise ValueError("at least one channel is needed")
        self._channels = channels
        self._stubs = tuple(rs_grpc.RouterServiceStub(c) for c in channels)
        self._checks = tuple(c.unary_unary(_health.CHECK_METHOD, None, None) for c in channels)
        self._turn = itertools.count()
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
        metadata: Metadata = (),
        channels: int = DEFAULT_CHANNELS,
    ) -> RouterClient:
        """Open channels to ``target`` (``host:port``); use the client as ``async with``.

        The channels connect lazily, on their first call (see ``wait_until_ready``).

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
            metadata: Sent with every call, before each call's own ``metadata``.
            channels: Channels opened, each with a TCP connection of its own;
                calls take them in turn. Several are what spreads one client's
                calls over the workers of ``serve --workers N`` (the kernel
                spreads connections among them, not calls); 1 is one
                connection. With a gRPC-aware load balancer in front, 1 is enough.

        Example:
            >>> async with RouterClient.connect(
            ...     "router.internal:443", tls=TlsConfig(ca="ca.pem"), token=token
            ... ) as client:
            ...     print(await client.health())
            SERVING
        """
        if channels < 1:
            raise ValueError("channels must be at least 1")
        creds, auth = credentials(token, tls)
        pool = []
        for index in range(channels):
            opts = channel_options(retry, tls, (*pool_options(index), *options))
            if creds is None:
                pool.append(
                    grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
                )
            else:
                pool.append(
                    grpc.aio.secure_channel(target, creds, options=opts, interceptors=interceptors)
                )
        return cls(
            pool,
            default_timeout=default_timeout,
            retry=retry,
            metadata=(*auth, *metadata),
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
        """Close the channels if this client opened them (calls in flight are cancelled)."""
        if self._owns_channel:
            for channel in self._channels:
                await channel.close(None)

    async def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait until every channel is connected, or raise ``Unavailable`` after ``timeout``."""
        try:
            async with asyncio.timeout(self._budget(timeout)):
                await asyncio.gather(*(c.channel_ready() for c in self._channels))
        except TimeoutError as exc:
            raise Unavailable("the channel did not connect in time") from exc

    @property
    def channels(self) -> int:
        """How many channels the calls take in turn."""
        return len(self._channels)

    @property
    def _stub(self) -> rs_grpc.RouterServiceAsyncStub:
        """The next channel's stub (round robin)."""
        return self._stubs[next(self._turn) % len(self._stubs)]

    @property
    def _check(self) -> Any:
        """The next channel's health ``Check`` method."""
        return self._checks[next(self._turn) % len(self._checks)]

    # -- RouteData: reads (resent on UNAVAILABLE) -------------------------------------------

    async def get_experiment(
        self, experiment_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[Experiment]:
        """Read an experiment (PostgreSQL; cached as ``experiment:{id}``).

        Raises:
            NotFound: No such experiment (reason ``EXPERIMENT_NOT_FOUND``).
            InvalidArgument: A malformed id (reason ``INVALID_ID``).

        Example:
            >>> (await client.get_experiment("checkout-v2")).value.variants[0].name
            'control'
        """
        return await self._route(ops.get_experiment(experiment_id), timeout, metadata)

    async def get_assignment(
        self,
        experiment_id: str,
        user_id: str,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[Assignment]:
        """The user's sticky variant, assigned on first request (experiment must be RUNNING).

        Example:
            >>> (await client.get_assignment("checkout-v2", "user-42")).value.variant
            'treatment'
        """
        return await self._route(ops.get_assignment(experiment_id, user_id), timeout, metadata)

    async def get_user_profile(
        self, user_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[UserProfile]:
        """Read a user profile (PostgreSQL; cached as ``user:{id}:profile``)."""
        return await self._route(ops.get_user_profile(user_id), timeout, metadata)

    async def get_event_metrics(
        self,
        experiment_id: str,
        variant: str,
        metric: str,
        hour: datetime | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[EventMetrics]:
        """Count, sum and unique users of one metric (an event type) in one UTC hour.

        Args:
            experiment_id: The experiment.
            variant: The variant.
            metric: The event type aggregated, e.g. ``"conversion"``.
            hour: The hour, truncated (naive means UTC; one that is not
                truncated is refused with ``HOUR_NOT_TRUNCATED``, not
                rounded); default: the current hour.
            timeout: Seconds for the call.
            metadata: Extra metadata of this call.

        Example:
            >>> m = (await client.get_event_metrics("checkout-v2", "treatment", "conversion")).value
            >>> m.count, m.sum, m.unique_users
            (12, 113.5, 11)
        """
        op = ops.get_event_metrics(experiment_id, variant, metric, hour)
        return await self._route(op, timeout, metadata)

    async def get_analytics(
        self,
        experiment_id: str,
        day: datetime | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[Analytics]:
        """Per-variant conversion, lift and significance for one UTC day (default: today).

        A ``day`` that is not midnight UTC is refused (``DAY_NOT_TRUNCATED``).

        Example:
            >>> for v in (await client.get_analytics("checkout-v2")).value.variants:
            ...     print(v.variant, v.conversion_rate, v.p_value)
        """
        return await self._route(ops.get_analytics(experiment_id, day), timeout, metadata)

    async def search(
        self,
        collection: str,
        embedding: Sequence[float],
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[SearchResult]:
        """The ``k`` nearest items of ``collection`` to ``embedding`` (ChromaDB, cached).

        Example:
            >>> hits = (await client.search("hypotheses", [0.9, 0.1, 0.0], k=1)).value.hits
            >>> hits[0].id, hits[0].document
            ('h1', 'bigger button')
        """
        return await self._route(ops.search(collection, embedding, k, filter), timeout, metadata)

    # -- RouteData: writes ----------------------------------------------------------------

    async def upsert_experiment(
        self, experiment: Experiment, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[Experiment]:
        """Create (``version=0``) or update (the ``version`` last read) an experiment.

        Not resent: if a timed-out attempt had committed, a resend would fail
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
        return await self._route(ops.upsert_experiment(experiment), timeout, metadata)

    async def upsert_user_profile(
        self, profile: UserProfile, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[UserProfile]:
        """Create (``version=0``) or update (the ``version`` last read) a user profile.

        Example:
            >>> await client.upsert_user_profile(
            ...     UserProfile(user_id="user-42", attributes={"country": "NL"}))
        """
        return await self._route(ops.upsert_user_profile(profile), timeout, metadata)

    async def track_events(
        self,
        events: Event | Iterable[Event],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[TrackEventsResult]:
        """Record one event or a batch (1..1000); each is STORED once, then DUPLICATE.

        Resent on ``UNAVAILABLE`` (with backoff, within the one deadline):
        events are deduplicated by ``event_id``, and the server answers
        ``UNAVAILABLE`` with reason ``EVENTS_IN_FLIGHT`` while an earlier
        attempt of the same events is pending. An event whose first attempt
        was stored but whose answer was lost then comes back ``DUPLICATE``.
        Every event needs its ``timestamp`` (a missing one is
        ``MISSING_FIELD``, never filled in).

        Returns:
            ``value.outcomes`` in request order (``event_id`` and ``status``),
            and the ``stored`` / ``duplicates`` counts.

        Example:
            >>> result = (await client.track_events(event)).value
            >>> status_name(result.outcomes[0].status)
            'STORED'
        """
        return await self._route(ops.track_events(events), timeout, metadata)

    async def upsert_embeddings(
        self,
        collection: str,
        items: Iterable[EmbeddingItem],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[UpsertEmbeddingsResult]:
        """Write vectors into ``collection`` (created on first write); cached searches renew.

        Example:
            >>> await client.upsert_embeddings("hypotheses", [
            ...     EmbeddingItem(id="h1", embedding=[1, 0, 0], document="bigger button")])
        """
        return await self._route(ops.upsert_embeddings(collection, items), timeout, metadata)

    # -- the cache itself and the server (service-config retries) ------------------------

    async def get_cached(
        self,
        keys: str | Iterable[str],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> rs.GetCachedResponse:
        """Read keys straight from the cache (no store behind it); misses are reported.

        Example:
            >>> entry = (await client.get_cached("experiment:checkout-v2")).entries[0]
            >>> entry.hit, entry.ttl_remaining.ToTimedelta()
            (True, datetime.timedelta(seconds=86117))
        """
        request = rs.GetCachedRequest(keys=ops.key_list(keys))
        return await self._call(self._stub.GetCached, request, timeout, metadata)

    async def invalidate(
        self,
        *,
        keys: str | Iterable[str] | None = None,
        pattern: str | None = None,
        experiment_id: str | None = None,
        user_id: str | None = None,
        collection: str | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> int:
        """Remove cache entries; name exactly one target. Returns how many keys went.

        Args:
            keys: These keys (one or many).
            pattern: A glob inside one key family, e.g. ``"metrics:checkout-v2:*"``.
            experiment_id: Everything derived from the experiment.
            user_id: Everything derived from the user.
            collection: Every cached search of a collection.
            timeout: Seconds for the call.
            metadata: Extra metadata of this call.

        Raises:
            ValueError: Not exactly one target was given (nothing is sent).

        Example:
            >>> await client.invalidate(pattern="metrics:checkout-v2:*")
            4
        """
        request = ops.invalidate_request(
            keys=keys,
            pattern=pattern,
            experiment_id=experiment_id,
            user_id=user_id,
            collection=collection,
        )
        response = await self._call(self._stub.Invalidate, request, timeout, metadata)
        return response.removed

    async def stats(
        self, *, fleet: bool = False, timeout: float | None = None, metadata: Metadata = ()
    ) -> rs.StatsResponse:
        """Cache counters (hit rate, per data type, Redis usage).

        Args:
            fleet: Sum every live server process sharing the server's Redis
                (each publishes every few seconds; ``max_age`` says how old the
                oldest figures are); by default, the answering process's own.
            timeout: Seconds for the call.
            metadata: Extra metadata of this call.
        """
        request = rs.StatsRequest(scope=rs.STATS_SCOPE_FLEET if fleet else rs.STATS_SCOPE_PROCESS)
        return await self._call(self._stub.Stats, request, timeout, metadata)

    async def health(
        self, service: str = "", *, timeout: float | None = None, metadata: Metadata = ()
    ) -> str:
        """Standard gRPC health ``Check``: ``"SERVING"``, ``"NOT_SERVING"``...

        Args:
            service: ``""`` for the server as a whole, or a backend name
                (``"redis"``, ``"postgres"``) or ``"mcprouter.v1.RouterService"``.
            timeout: Seconds for the call.
            metadata: Extra metadata of this call.

        Raises:
            NotFound: The server knows no such service name.
        """
        all_metadata, request_id = with_request_id(self._metadata, metadata)
        try:
            reply: bytes = await self._check(
                _health.encode_request(service),
                timeout=self._budget(timeout),
                metadata=all_metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
        return _health.decode_status(reply)

    # -- plumbing -------------------------------------------------------------------------

    def _budget(self, timeout: float | None) -> float:
        return self._default_timeout if timeout is None else timeout

    async def _route(
        self, op: ops.Operation[T], timeout: float | None, metadata: Metadata
    ) -> Served[T]:
        all_metadata, request_id = with_request_id(self._metadata, metadata)

        async def attempt(seconds: float) -> rs.RouteDataResponse:
            return await self._stub.RouteData(op.request, timeout=seconds, metadata=all_metadata)

        try:
            response = await call_with_retries(
                attempt,
                budget=self._budget(timeout),
                policy=self._retry if op.retryable else None,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
        return op.served(response)

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Message,
        timeout: float | None,
        metadata: Metadata,
    ) -> R:
        all_metadata, request_id = with_request_id(self._metadata, metadata)
        try:
            return await method(request, timeout=self._budget(timeout), metadata=all_metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
