"""One trace follows a client call into a service and down to its database query."""

import grpc
import pytest
from audiences.v1 import admin_pb2, admin_pb2_grpc, common_pb2, profile_pb2, profile_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.shared import telemetry
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.profile.seeding import HotSeed, seed_hot

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


async def test_traced_get_profile_reads_redis_inside_its_server_span(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    exporter = InMemorySpanExporter()
    provider = telemetry.setup_tracing("test", "none", exporter)
    assert provider is not None
    await seed_hot(
        resources.redis,
        workspace.workspace_id,
        HotSeed(profile_id=3, identifiers=[("user_id", "u3")]),
    )
    request = profile_pb2.GetProfileRequest(
        identifier=common_pb2.Identifier(type="user_id", value="u3")
    )
    async with in_process(resources, ["profile"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            # Twice: the first call may load the script (NOSCRIPT, then EVAL).
            await stub.GetProfile(request, metadata=bearer(workspace.profile))
            reply = await stub.GetProfile(request, metadata=bearer(workspace.profile))
    assert reply.profile_id == "3"
    provider.force_flush()
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.name == "/audiences.v1.ProfileService/GetProfile"][-1]
    inside = [
        s
        for s in spans
        if s.parent and s.parent.span_id == server.context.span_id
        if s.attributes.get("db.system") == "redis"
    ]
    # The read went over the pipelined connection and kept its Redis client span.
    assert [(s.name, s.kind) for s in inside] == [("EVALSHA", SpanKind.CLIENT)]
    assert inside[0].instrumentation_scope.name == "services.shared.redis_pipelined"
