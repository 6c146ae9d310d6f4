"""``SyncRouterClient``: the blocking twin of ``RouterClient``, for code without asyncio.

Same methods, arguments, answers, errors and retries as ``RouterClient``
(whose docstrings say what each operation does); it runs on gRPC's
synchronous channel, so it is safe to share between threads.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from mcprouter.client import _health
from mcprouter.client import _operations as ops
from mcprouter.client._calls import Metadata, credentials, with_request_id
from mcprouter.client._client import DEFAULT_RETRY, DEFAULT_TIMEOUT_S
from mcprouter.client._config import (
    DEFAULT_CHANNELS,
    RetryPolicy,
    TlsConfig,
    channel_options,
    pool_options,
)
from mcprouter.client._errors import Unavailable, from_rpc_error
from mcprouter.client._results import Served
from mcprouter.client._retry import call_with_retries_sync
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


class SyncRouterClient:
    """Blocking client of mcp-router; see ``RouterClient`` for every method.

    Example:
        >>> with SyncRouterClient.connect("localhost:50051") as client:
        ...     print(client.get_experiment("checkout-v2").status_name)
        CACHED
    """

    def __init__(
        self,
        channel: grpc.Channel | Sequence[grpc.Channel],
        *,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        metadata: Metadata = (),
        owns_channel: bool = False,
    ) -> None:
        """Use existing channels (taken in turn); prefer ``SyncRouterClient.connect``."""
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        channels = (channel,) if isinstance(channel, grpc.Channel) else tuple(channel)
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
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor[Any, Any]] = (),
        options: Sequence[tuple[str, Any]] = (),
        metadata: Metadata = (),
        channels: int = DEFAULT_CHANNELS,
    ) -> SyncRouterClient:
        """Open channels to ``target``; the arguments are ``RouterClient.connect``'s."""
        if channels < 1:
            raise ValueError("channels must be at least 1")
        creds, auth = credentials(token, tls)
        pool = []
        for index in range(channels):
            opts = channel_options(retry, tls, (*pool_options(index), *options))
            channel = (
                grpc.insecure_channel(target, options=opts)
                if creds is None
                else grpc.secure_channel(target, creds, options=opts)
            )
            if interceptors:
                channel = grpc.intercept_channel(channel, *interceptors)
            pool.append(channel)
        return cls(
            pool,
            default_timeout=default_timeout,
            retry=retry,
            metadata=(*auth, *metadata),
            owns_channel=True,
        )

    def __enter__(self) -> SyncRouterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels if this client opened them."""
        if self._owns_channel:
            for channel in self._channels:
                channel.close()

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait until every channel is connected, or raise ``Unavailable`` after ``timeout``."""
        deadline = time.monotonic() + self._budget(timeout)
        try:
            for channel in self._channels:
                left = max(0.0, deadline - time.monotonic())
                grpc.channel_ready_future(channel).result(timeout=left)
        except grpc.FutureTimeoutError as exc:
            raise Unavailable("the channel did not connect in time") from exc

    @property
    def channels(self) -> int:
        """How many channels the calls take in turn."""
        return len(self._channels)

    @property
    def _stub(self) -> rs_grpc.RouterServiceStub:
        """The next channel's stub (round robin; ``next`` on a count is thread-safe)."""
        return self._stubs[next(self._turn) % len(self._stubs)]

    @property
    def _check(self) -> Any:
        """The next channel's health ``Check`` method."""
        return self._checks[next(self._turn) % len(self._checks)]

    # -- RouteData ------------------------------------------------------------------------

    def get_experiment(
        self, experiment_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[Experiment]:
        """See ``RouterClient.get_experiment``."""
        return self._route(ops.get_experiment(experiment_id), timeout, metadata)

    def get_assignment(
        self,
        experiment_id: str,
        user_id: str,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[Assignment]:
        """See ``RouterClient.get_assignment``."""
        return self._route(ops.get_assignment(experiment_id, user_id), timeout, metadata)

    def get_user_profile(
        self, user_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[UserProfile]:
        """See ``RouterClient.get_user_profile``."""
        return self._route(ops.get_user_profile(user_id), timeout, metadata)

    def get_event_metrics(
        self,
        experiment_id: str,
        variant: str,
        metric: str,
        hour: datetime | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[EventMetrics]:
        """See ``RouterClient.get_event_metrics``."""
        op = ops.get_event_metrics(experiment_id, variant, metric, hour)
        return self._route(op, timeout, metadata)

    def get_analytics(
        self,
        experiment_id: str,
        day: datetime | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[Analytics]:
        """See ``RouterClient.get_analytics``."""
        return self._route(ops.get_analytics(experiment_id, day), timeout, metadata)

    def search(
        self,
        collection: str,
        embedding: Sequence[float],
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[SearchResult]:
        """See ``RouterClient.search``."""
        return self._route(ops.search(collection, embedding, k, filter), timeout, metadata)

    def upsert_experiment(
        self, experiment: Experiment, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[Experiment]:
        """See ``RouterClient.upsert_experiment``."""
        return self._route(ops.upsert_experiment(experiment), timeout, metadata)

    def upsert_user_profile(
        self, profile: UserProfile, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Served[UserProfile]:
        """See ``RouterClient.upsert_user_profile``."""
        return self._route(ops.upsert_user_profile(profile), timeout, metadata)

    def track_events(
        self,
        events: Event | Iterable[Event],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[TrackEventsResult]:
        """See ``RouterClient.track_events`` (resent on UNAVAILABLE, events are deduplicated)."""
        return self._route(ops.track_events(events), timeout, metadata)

    def upsert_embeddings(
        self,
        collection: str,
        items: Iterable[EmbeddingItem],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Served[UpsertEmbeddingsResult]:
        """See ``RouterClient.upsert_embeddings``."""
        return self._route(ops.upsert_embeddings(collection, items), timeout, metadata)

    # -- the cache itself and the server --------------------------------------------------

    def get_cached(
        self,
        keys: str | Iterable[str],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> rs.GetCachedResponse:
        """See ``RouterClient.get_cached``."""
        request = rs.GetCachedRequest(keys=ops.key_list(keys))
        return self._call(self._stub.GetCached, request, timeout, metadata)

    def invalidate(
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
        """See ``RouterClient.invalidate``."""
        request = ops.invalidate_request(
            keys=keys,
            pattern=pattern,
            experiment_id=experiment_id,
            user_id=user_id,
            collection=collection,
        )
        return self._call(self._stub.Invalidate, request, timeout, metadata).removed

    def stats(
        self, *, fleet: bool = False, timeout: float | None = None, metadata: Metadata = ()
    ) -> rs.StatsResponse:
        """See ``RouterClient.stats``."""
        request = rs.StatsRequest(scope=rs.STATS_SCOPE_FLEET if fleet else rs.STATS_SCOPE_PROCESS)
        return self._call(self._stub.Stats, request, timeout, metadata)

    def health(
        self, service: str = "", *, timeout: float | None = None, metadata: Metadata = ()
    ) -> str:
        """See ``RouterClient.health``."""
        all_metadata, request_id = with_request_id(self._metadata, metadata)
        try:
            reply: bytes = self._check(
                _health.encode_request(service),
                timeout=self._budget(timeout),
                metadata=all_metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
        return _health.decode_status(reply)

    # -- plumbing -------------------------------------------------------------------------

    def _budget(self, timeout: float | None) -> float:
        return self._default_timeout if timeout is None else timeout

    def _route(self, op: ops.Operation[T], timeout: float | None, metadata: Metadata) -> Served[T]:
        all_metadata, request_id = with_request_id(self._metadata, metadata)

        def attempt(seconds: float) -> rs.RouteDataResponse:
            response: rs.RouteDataResponse = self._stub.RouteData(
                op.request, timeout=seconds, metadata=all_metadata
            )
            return response

        try:
            response = call_with_retries_sync(
                attempt,
                budget=self._budget(timeout),
                policy=self._retry if op.retryable else None,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
        return op.served(response)

    def _call(
        self,
        method: Callable[..., R],
        request: Message,
        timeout: float | None,
        metadata: Metadata,
    ) -> R:
        all_metadata, request_id = with_request_id(self._metadata, metadata)
        try:
            return method(request, timeout=self._budget(timeout), metadata=all_metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, request_id) from exc
