"""OpenTelemetry: one tracer provider per process, the exporter chosen by
OTEL_TRACES_EXPORTER (otlp, console, file or none), and instrumentation of gRPC (via the
server/client interceptors), SQLAlchemy and Redis; and the process's log lines, JSON
with the trace and span they were written in.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import grpc
import orjson
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status

log = logging.getLogger(__name__)

# OTEL_TRACES_EXPORTER=file writes one JSON object per finished span to this file.
FILE_EXPORTER_PATH = "OTEL_EXPORTER_FILE_PATH"


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one line of JSON: ids in hex (trace_id,
    span_id, parent_span_id), name, kind, service, start/end in ns, attributes, links.

    For tests that run services as separate processes and for reading a trace on a
    machine with no collector; give each process its own file.
    """

    def __init__(self, path: str) -> None:
        """Append to `path` (created if missing)."""
        self._file = open(path, "ab", buffering=0)  # closed in shutdown()
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write `spans`, one line each, in one write."""
        lines = b"".join(orjson.dumps(span_record(span)) + b"\n" for span in spans)
        with self._lock:
            self._file.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, object]:
    """A finished span as plain JSON-able data (JsonLinesSpanExporter's line)."""
    context = span.get_span_context()
    assert context is not None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
            }
            for link in span.links
        ],
    }


def make_exporter(name: str) -> SpanExporter | None:
    """The span exporter named by OTEL_TRACES_EXPORTER; None for 'none'."""
    if name == "none" or not name:
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "file":
        path = os.environ.get(FILE_EXPORTER_PATH)
        if not path:
            raise ValueError(f"OTEL_TRACES_EXPORTER=file needs {FILE_EXPORTER_PATH}")
        # "{pid}" in the path: one file per process (several may share the setting).
        return JsonLinesSpanExporter(path.replace("{pid}", str(os.getpid())))
    if name == "otlp":
        # Imported lazily: it pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT
    raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console, file or none; got {name!r}")


_sqlalchemy_instrumented = False
_redis_instrumented = False


def setup_tracing(
    service_name: str, exporter_name: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Instrument SQLAlchemy (and Redis once spans are recorded) and, when spans go
    somewhere, install the process-wide SDK tracer provider (first call wins). Returns
    the SDK provider, or None while tracing is off.

    With OTEL_TRACES_EXPORTER=none no SDK provider is installed, so every span is the
    API's non-recording no-op: tracing that nobody reads costs next to nothing on hot
    paths (recording and dropping a span per Redis call cost ~120 us). Redis is then
    not instrumented at all: even a no-op span per command was about a tenth of a
    GetProfile's server CPU (measured). `exporter` overrides the named one (tests pass
    an in-memory exporter). The sampler follows the standard OTEL_TRACES_SAMPLER /
    OTEL_TRACES_SAMPLER_ARG variables.
    """
    global _sqlalchemy_instrumented
    if not _sqlalchemy_instrumented:
        # Patches engine creation, so it must come before any engine is made; engines
        # made through sqlalchemy.ext.asyncio.create_async_engine are traced, and
        # start recording whenever an SDK provider is installed, even later.
        SQLAlchemyInstrumentor().instrument()
        _sqlalchemy_instrumented = True
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        if exporter is not None:
            current.add_span_processor(BatchSpanProcessor(RedactingExporter(exporter)))
        _instrument_redis()
        return current
    chosen = exporter or make_exporter(exporter_name)
    if chosen is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(RedactingExporter(chosen)))
    trace.set_tracer_provider(provider)
    _instrument_redis()
    return provider


def _instrument_redis() -> None:
    # Patches the client classes, so clients made before this are traced as well.
    global _redis_instrumented
    if not _redis_instrumented:
        RedisInstrumentor().instrument()
        _redis_instrumented = True


def tracing_enabled() -> bool:
    """True once an SDK tracer provider is installed (spans are recorded somewhere)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


@contextmanager
def continued_span(
    tracer: trace.Tracer,
    name: str,
    carriers: Iterable[Mapping[str, str]],
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[trace.Span | None]:
    """A span for work done on behalf of several callers (a group commit, a batch of
    stream entries): the child of the first carried W3C context, linked to the other
    traces among `carriers`; with none carried, a child of the current context. Yields
    None, and starts nothing, while tracing is off."""
    if not tracing_enabled():
        yield None
        return
    parent = None
    parent_trace = 0
    links: list[trace.Link] = []
    seen: set[int] = set()
    for carrier in carriers:
        if not carrier:
            continue
        carried = propagate.extract(carrier)
        span_context = trace.get_current_span(carried).get_span_context()
        if not span_context.is_valid or span_context.trace_id in seen:
            continue
        seen.add(span_context.trace_id)
        if parent is None:
            parent, parent_trace = carried, span_context.trace_id
        elif span_context.trace_id != parent_trace:
            links.append(trace.Link(span_context))
    with tracer.start_as_current_span(
        name, context=parent, links=links, attributes=dict(attributes or {})
    ) as span:
        yield span


def carries_trace_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """True when gRPC call metadata holds a W3C `traceparent` to continue."""
    return any(key == "traceparent" for key, _ in metadata or ())


def server_interceptor() -> grpc.aio.ServerInterceptor:
    """The OpenTelemetry grpc.aio server interceptor (continues the caller's trace)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor()


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry grpc.aio client interceptors (propagate the trace to the server)."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors()


# Postgres's DETAIL quotes row values ("Key (email)=(ada@example.com) already exists",
# "Failing row contains (...)"), and asyncpg puts it into the exception text, which
# SQLAlchemy's hide_parameters cannot reach: it is cut from every log line. Up to the
# end of the line, written as a newline or (inside a repr) as the two characters \n.
_POSTGRES_DETAIL = re.compile(r"DETAIL:.*?(?=\n|\\n|$)", re.MULTILINE)


def redact(text: str) -> str:
    """`text` without Postgres DETAIL lines (they quote the values of rows)."""
    if "DETAIL:" not in text:
        return text
    return _POSTGRES_DETAIL.sub("DETAIL: [hidden: may quote row values]", text)


class RedactingExporter(SpanExporter):
    """Wraps an exporter so no span leaves the process with Postgres DETAIL text.

    The SQLAlchemy and gRPC instrumentations copy an exception's text into the span's
    status description and its `exception` event (message and stack trace); asyncpg's
    text quotes row values there, as in log lines.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export `spans` with DETAIL lines cut from statuses and event attributes."""
        return self.inner.export([_redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self.inner.force_flush(timeout_millis)


def _redacted_span(span: ReadableSpan) -> ReadableSpan:
    description = span.status.description or ""
    leaky_events = any(
        isinstance(value, str) and "DETAIL:" in value
        for event in span.events
        for value in (event.attributes or {}).values()
    )
    if "DETAIL:" not in description and not leaky_events:
        return span
    events = [
        Event(
            event.name,
            {
                key: redact(value) if isinstance(value, str) else value
                for key, value in (event.attributes or {}).items()
            },
            event.timestamp,
        )
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code, redact(description) or None),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the current trace_id and
    span_id (null outside a span) and, when there is one, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        context = trace.get_current_span().get_span_context()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
            "span_id": format(context.span_id, "016x") if context.is_valid else None,
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """Send the process's logs to stderr as JSON lines (JsonFormatter)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
