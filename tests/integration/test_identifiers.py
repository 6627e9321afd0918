"""An email written by ingest in any case is found by the profile service in any case."""

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, profile_pb2, profile_pb2_grpc

from services.shared.identifiers import normalize_identifier
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


def test_only_emails_are_case_folded() -> None:
    assert normalize_identifier("email", "  Ada@Example.COM ") == "ada@example.com"
    assert normalize_identifier("user_id", "Ada") == "Ada"
    assert normalize_identifier("crm_id", " X1 ") == " X1 "


async def test_email_lookup_ignores_case_across_services(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    async with in_process(resources, ["ingest", "profile"]) as addresses:
        async with (
            grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
            grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
        ):
            sent = await ingest_pb2_grpc.IngestServiceStub(ingest_channel).Batch(
                ingest_pb2.BatchRequest(
                    events=[
                        ingest_pb2.Event(
                            message_id="m-email",
                            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                            user_id="ada",
                            traits=orjson.dumps({"email": "Ada@Example.com"}),
                        )
                    ]
                ),
                metadata=bearer(workspace.ingest),
            )
            assert sent.accepted == 1
            profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
            for spelling in ("ada@example.com", "ADA@EXAMPLE.COM", " Ada@Example.com "):
                profile = await profiles.GetProfile(
                    profile_pb2.GetProfileRequest(
                        identifier=common_pb2.Identifier(type="email", value=spelling)
                    ),
                    metadata=bearer(workspace.profile),
                )
                assert ("user_id", "ada") in {(i.type, i.value) for i in profile.identifiers}
