"""One trace follows a client call into a service and down to its database query."""

import grpc
import pytest
from audiences.v1 import admin_pb2, admin_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.shared import telemetry
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


async def test_client_server_and_query_share_one_trace(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = telemetry.setup_tracing("test", "none", exporter)
    assert provider is not None
    async with in_process(resources, ["ingest"]) as addresses:
        async with grpc.aio.insecure_channel(
            addresses["ingest"], interceptors=telemetry.client_interceptors()
        ) as channel:
            tracer = trace.get_tracer("test")
            with tracer.start_as_current_span("app request") as root:
                await admin_pb2_grpc.AdminServiceStub(channel).GetWorkspace(
                    admin_pb2.GetWorkspaceRequest(), metadata=bearer(workspace.admin)
                )
    provider.force_flush()
    trace_id = root.get_span_context().trace_id
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    queries = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    assert [s.name for s in server] == ["/audiences.v1.AdminService/GetWorkspace"]
    assert any("workspaces" in (s.attributes.get("db.statement") or "") for s in queries)
    # The query ran inside the server span, which continued the client's trace.
    assert all(q.parent is not None for q in queries)
    assert any(s.kind == SpanKind.CLIENT and "GetWorkspace" in s.name for s in spans)
