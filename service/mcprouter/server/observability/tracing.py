"""Optional OpenTelemetry tracing, off by default (``OTEL_ENABLED=true`` turns it on).

OpenTelemetry is not a dependency of the server: everything here is imported
only when tracing is enabled, and a missing package turns tracing off with a
warning instead of failing start-up. Install the ``otel`` extra
(``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-grpc``; the
``opentelemetry-instrumentation-redis`` and ``-asyncpg`` packages add spans
for each Redis command and SQL statement when present).

Spans are exported over OTLP/gRPC to the collector named by the standard
variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...).
Each RPC gets a server span from the telemetry layer, continuing the
caller's trace from its ``traceparent`` metadata; log lines carry its
``trace_id`` and ``span_id`` in the JSON format.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

# (module, class) of instrumentations enabled when installed.
INSTRUMENTATIONS = (
    ("opentelemetry.instrumentation.redis", "RedisInstrumentor"),
    ("opentelemetry.instrumentation.asyncpg", "AsyncPGInstrumentor"),
)


class _Span:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set_code(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("rpc.grpc.status_code_name", code)
        if code != "OK":
            self._span.set_status(Status(StatusCode.ERROR, code))


class Tracing:
    """A configured tracer provider; ``span`` opens one server span per call."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate

        self._provider = provider
        self._tracer = provider.get_tracer("mcprouter.server")
        self._propagate = propagate
        self._instrumented: list[Any] = []

    def instrument(self) -> list[str]:
        """Turn on every installed client instrumentation; return their names."""
        import importlib

        names = []
        for module_name, class_name in INSTRUMENTATIONS:
            try:
                instrumentor = getattr(importlib.import_module(module_name), class_name)()
            except ImportError:
                continue
            instrumentor.instrument(tracer_provider=self._provider)
            self._instrumented.append(instrumentor)
            names.append(class_name)
        return names

    @contextlib.contextmanager
    def span(
        self, service: str, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> Iterator[_Span]:
        """A SERVER span named ``service/method`` in the caller's trace."""
        from opentelemetry.trace import SpanKind

        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        parent = self._propagate.extract(carrier)
        with self._tracer.start_as_current_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _Span(span)

    def shutdown(self) -> None:
        """Undo instrumentations and flush pending spans."""
        for instrumentor in self._instrumented:
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()
        self._provider.shutdown()


def start_tracing() -> Tracing | None:
    """Configure OTLP export; ``None`` (with a warning) when OpenTelemetry is missing."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_ENABLED is set but OpenTelemetry is not installed (%s); no tracing", exc)
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or "mcp-router"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracing = Tracing(provider)
    names = tracing.instrument()
    log.info("tracing on (OTLP); instrumented: %s", ", ".join(names) or "RPCs only")
    return tracing


def trace_fields() -> Mapping[str, str]:
    """``trace_id``/``span_id`` of the current span, for JSON log lines (or nothing)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return {}
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
