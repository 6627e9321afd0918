"""The trace exporter is chosen by OTEL_TRACES_EXPORTER."""

import os
from pathlib import Path

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from services.shared.telemetry import JsonLinesSpanExporter, make_exporter

pytestmark = pytest.mark.unit


def test_exporter_by_name() -> None:
    assert make_exporter("none") is None
    assert make_exporter("") is None
    assert isinstance(make_exporter("console"), ConsoleSpanExporter)
    assert isinstance(make_exporter("otlp"), OTLPSpanExporter)


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="otlp, console, file or none"):
        make_exporter("jaeger")


def test_file_exporter_writes_one_json_line_per_span_with_parent_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_FILE_PATH", str(tmp_path / "spans-{pid}.jsonl"))
    exporter = make_exporter("file")
    assert isinstance(exporter, JsonLinesSpanExporter)
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("unit")
    with tracer.start_as_current_span("outer") as outer:
        with tracer.start_as_current_span("inner", attributes={"n": 3}):
            pass
    provider.shutdown()
    (written,) = tmp_path.glob("spans-*.jsonl")
    assert written.name == f"spans-{os.getpid()}.jsonl"
    inner, outer_line = (orjson.loads(line) for line in written.read_bytes().splitlines())
    assert (inner["name"], outer_line["name"]) == ("inner", "outer")
    assert inner["trace_id"] == outer_line["trace_id"] == f"{outer.context.trace_id:032x}"
    assert inner["parent_span_id"] == outer_line["span_id"]
    assert outer_line["parent_span_id"] is None
    assert inner["service"] == "unit" and inner["attributes"] == {"n": 3}


def test_file_exporter_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_FILE_PATH", raising=False)
    with pytest.raises(ValueError, match="OTEL_EXPORTER_FILE_PATH"):
        make_exporter("file")
