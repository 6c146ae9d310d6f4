"""The telemetry layer: request id, metrics, access log and trace span per call.

It is the outermost ``edge.wrapping.Layer``, so it sees every unary call
exactly as the client does: an error translated by ``edge.status`` arrives
here as ``AbortError`` with its code already set on the context. Streams
(health ``Watch``) pass through untouched.

Per call it

* takes the caller's ``x-request-id`` (if well-formed) or makes one, puts it
  in ``logs.REQUEST_ID`` for every log line of the call, and sends it back in
  the response's trailing metadata (also on errors);
* records ``RpcMetrics`` (in flight, latency, code) when metrics are on;
* logs one access line per call (method, RouteData operation, serve
  status, code, duration, request id): at INFO with ``ACCESS_LOG=true``,
  otherwise at DEBUG, and at INFO anyway for calls that failed on the
  server's side; at DEBUG a second line with the cache key and its outcome.
  Never the request or response payload.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from mcprouter.server.edge.wrapping import Behavior, Malformed, with_unary
from mcprouter.server.observability.logs import REQUEST_ID
from mcprouter.server.observability.metrics import RpcMetrics
from mcprouter.v1.serve_status_pb2 import ServeStatus

log = logging.getLogger("mcprouter.server.rpc")
cache_log = logging.getLogger("mcprouter.server.cache")

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Codes that mean the server (or a backend) failed, not the caller; logged at
# INFO. A deadline or cancellation is the caller's (and metrics count them).
_SERVER_SIDE = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DATA_LOSS"})

if TYPE_CHECKING:
    from mcprouter.server.edge.wrapping import Handler


class CallSpan(Protocol):
    """A trace span around one call (see ``tracing.py``)."""

    def set_code(self, code: str) -> None:
        """Record the call's final status code."""


class CallTracer(Protocol):
    """Opens a span per call."""

    def span(
        self, service: str, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> AbstractContextManager[CallSpan]:
        """A span for one call, continuing the caller's trace from ``metadata``."""


class _NullSpan:
    """The span of a call when tracing is off: does nothing, reused by every call."""

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_code(self, code: str) -> None:
        """Ignore the code."""


_NO_SPAN = _NullSpan()


def request_ids() -> Callable[[], str]:
    """Makes this process's request ids: a random prefix and a counter.

    Unique across processes and restarts (the prefix is 48 random bits drawn
    per ``Telemetry``, so after a worker's fork too), and cheap: a random id per
    call cost a ``getrandom`` system call on every hit. They correlate log
    lines; nothing relies on them being unguessable.
    """
    prefix = secrets.token_hex(6)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


def request_id_of(context: grpc.aio.ServicerContext[Any, Any], new_id: Callable[[], str]) -> str:
    """The caller's ``x-request-id`` when well-formed, else ``new_id()``."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _VALID_ID.fullmatch(value):
            return value
    return new_id()


def code_of(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    """The status code set on the context (by ``abort``), or ``default``."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


class Telemetry:
    """Wraps every unary-unary handler (once, when the server is built)."""

    def __init__(
        self,
        metrics: RpcMetrics | None = None,
        tracer: CallTracer | None = None,
        *,
        echo_request_id: bool = True,
        access_log: bool = False,
    ) -> None:
        self._metrics = metrics
        self._tracer = tracer
        self._echo = echo_request_id
        self._ok_level = logging.INFO if access_log else logging.DEBUG
        self._new_id = request_ids()

    def wrap(self, handler: Handler, method: str) -> Handler:
        """Observe the method's unary calls; streams pass untouched."""
        if handler.unary_unary is None:
            return handler
        return with_unary(handler, self._observed(handler.unary_unary, method))  # type: ignore[arg-type]

    def _observed(self, behavior: Behavior, full_method: str) -> Behavior:
        service, _, method = full_method.lstrip("/").rpartition("/")
        is_route = method == "RouteData"
        metrics = self._metrics
        tracer = self._tracer
        echo = self._echo
        ok_level = self._ok_level
        new_id = self._new_id

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = request_id_of(context, new_id)
            token = REQUEST_ID.set(request_id)
            parsed = request.__class__ is not Malformed
            operation = (request.WhichOneof("operation") or "") if is_route and parsed else ""
            gauge = metrics.started(service, method) if metrics is not None else None
            if metrics is not None and operation == "track_events":
                metrics.event_batch.observe(len(request.track_events.events))
            span = (
                tracer.span(service, method, tuple(context.invocation_metadata() or ()))
                if tracer is not None
                else _NO_SPAN
            )
            started = time.perf_counter()
            code = "UNKNOWN"
            response = None
            with span as active:
                try:
                    if echo:
                        # Trailing metadata rides on the status the server sends
                        # anyway; initial metadata would cost an extra op per call.
                        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
                    response = await behavior(request, context)
                    code = code_of(context, "OK")
                    return response
                except BaseException as exc:
                    code = _code_after(exc, context)
                    raise
                finally:
                    elapsed = time.perf_counter() - started
                    active.set_code(code)
                    if metrics is not None and gauge is not None:
                        gauge.dec()
                        metrics.finished(service, method, operation, code, elapsed)
                    _log_call(ok_level, method, operation, code, elapsed, response=response)
                    REQUEST_ID.reset(token)

        return call


def _code_after(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    if isinstance(exc, asyncio.CancelledError):
        # The client went away: by its deadline, or by cancelling.
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    if isinstance(exc, grpc.aio.AbortError):
        return code_of(context, "UNKNOWN")
    return "UNKNOWN"


def _log_call(
    ok_level: int, method: str, operation: str, code: str, elapsed: float, *, response: Any
) -> None:
    level = logging.INFO if code in _SERVER_SIDE else ok_level
    if not log.isEnabledFor(level):
        return
    name = f"{method}.{operation}" if operation else method
    status = getattr(response, "status", None) if operation else None
    fields: dict[str, Any] = {
        "rpc": name,
        "method": method,
        "operation": operation,
        "status": ServeStatus.Name(status).removeprefix("SERVE_STATUS_") if status else "",
        "code": code,
        "duration_ms": round(elapsed * 1000, 3),
    }
    log.log(level, "%s %s in %.1f ms", name, code, elapsed * 1000, extra=fields)
    cache_key = getattr(response, "cache_key", "") if response is not None else ""
    if cache_key and cache_log.isEnabledFor(logging.DEBUG):
        served = ServeStatus.Name(response.status).removeprefix("SERVE_STATUS_")
        cache_log.debug(
            "cache %s %s in %.1f ms",
            cache_key,
            served,
            elapsed * 1000,
            extra={
                "cache_key": cache_key,
                "cache_status": served,
                "cache_hit": served == "CACHED",
                "duration_ms": fields["duration_ms"],
            },
        )
