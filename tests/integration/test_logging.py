"""Log lines are JSON with the trace and span they were written in, and a failing SQL
statement's logged text never holds the values it carried (people's emails, traits)."""

import io
import logging

import grpc
import orjson
import pytest
from audiences.v1 import segmentation_pb2, segmentation_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from services.shared import telemetry
from services.shared.db.engine import create_engine
from services.shared.db.tables import identities
from services.shared.telemetry import JsonFormatter
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

EMAIL = "ada.lovelace@example.com"


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    """A logger whose lines go through the service's JSON formatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


async def test_a_failing_statement_is_logged_without_its_values(  # type: ignore[no-untyped-def]
    database_url, captured
) -> None:
    logger, buffer = captured
    engine = create_engine(database_url)
    row = {
        "workspace_id": "ws_1",
        "id_type": "email",
        "id_value": EMAIL,
        "profile_id": 1,
        "first_seen_us": 0,
    }
    tracer = TracerProvider().get_tracer("test")
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(identities).values(**row))
        with pytest.raises(IntegrityError) as failure:
            async with engine.begin() as connection:
                await connection.execute(insert(identities).values(**row))
        # Postgres itself quotes the duplicate key in the error: what must not leak.
        assert EMAIL in str(failure.value)
        with tracer.start_as_current_span("request") as span:
            logger.error("store failed", exc_info=failure.value)
            logger.warning("lookup failed: %r", failure.value)
    finally:
        await engine.dispose()

    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    assert len(lines) == 2
    context = span.get_span_context()
    for line in lines:
        assert line["level"] in ("ERROR", "WARNING")
        assert line["logger"] == "tests.logging"
        assert line["trace_id"] == format(context.trace_id, "032x")
        assert line["span_id"] == format(context.span_id, "016x")
    assert lines[0]["message"] == "store failed"
    assert "INSERT INTO identities" in lines[0]["exception"]  # the statement is kept
    assert "UniqueViolation" in lines[0]["exception"]
    assert "parameters hidden" in lines[0]["exception"]
    assert "UniqueViolation" in lines[1]["message"]
    assert EMAIL not in buffer.getvalue()


def test_a_line_outside_any_span_has_null_ids(captured) -> None:  # type: ignore[no-untyped-def]
    logger, buffer = captured
    logger.info("serving on %s", "127.0.0.1:1")
    line = orjson.loads(buffer.getvalue())
    assert line["message"] == "serving on 127.0.0.1:1"
    assert line["level"] == "INFO"
    assert line["trace_id"] is None and line["span_id"] is None


async def test_a_line_written_while_serving_an_rpc_carries_the_callers_trace(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("services.segmentation.service")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        async with in_process(resources, ["segmentation"]) as addresses:
            async with grpc.aio.insecure_channel(addresses["segmentation"]) as channel:
                await segmentation_pb2_grpc.SegmentationServiceStub(channel).CreateAudience(
                    segmentation_pb2.CreateAudienceRequest(
                        audience=segmentation_pb2.Audience(
                            key="buyers", definition=orjson.dumps({"event": {"name": "Bought"}})
                        )
                    ),
                    metadata=(
                        *bearer(workspace.admin),
                        ("traceparent", f"00-{trace_id}-{parent_id}-01"),
                    ),
                )

                async def backfilled() -> dict[str, object] | None:
                    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
                    return next((x for x in lines if "live with" in str(x["message"])), None)

                line = await eventually(backfilled, 20, "the backfill's log line")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    # The backfill runs in a task the RPC started: its lines belong to the caller's trace.
    assert line["trace_id"] == trace_id
    assert line["logger"] == "services.segmentation.service"
    assert line["level"] == "INFO"
    assert isinstance(line["span_id"], str) and len(line["span_id"]) == 16


async def test_a_failing_statement_leaves_no_values_in_exported_spans(  # type: ignore[no-untyped-def]
    database_url,
) -> None:
    exporter = InMemorySpanExporter()
    provider = telemetry.setup_tracing("test", "none", exporter)
    assert provider is not None
    engine = create_engine(database_url)
    row = {
        "workspace_id": "ws_1",
        "id_type": "email",
        "id_value": EMAIL,
        "profile_id": 1,
        "first_seen_us": 0,
    }
    tracer = trace.get_tracer("test")
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(identities).values(**row))
        with tracer.start_as_current_span("request") as root:
            with pytest.raises(IntegrityError) as failure:
                async with engine.begin() as connection:
                    await connection.execute(insert(identities).values(**row))
    finally:
        await engine.dispose()
    provider.force_flush()
    assert EMAIL in str(failure.value)  # Postgres quoted it: what must not be exported
    trace_id = root.get_span_context().trace_id
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    failed = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert failed, "the failing INSERT's span is recorded as an error"
    exported = " ".join(
        [s.status.description or "" for s in spans]
        + [str(value) for s in spans for e in s.events for value in (e.attributes or {}).values()]
    )
    assert "UniqueViolation" in exported  # the error's kind is kept
    assert EMAIL not in exported
