"""The trace exporter is chosen by OTEL_TRACES_EXPORTER."""

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from services.shared.telemetry import make_exporter

pytestmark = pytest.mark.unit


def test_exporter_by_name() -> None:
    assert make_exporter("none") is None
    assert make_exporter("") is None
    assert isinstance(make_exporter("console"), ConsoleSpanExporter)
    assert isinstance(make_exporter("otlp"), OTLPSpanExporter)


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="otlp, console or none"):
        make_exporter("jaeger")
