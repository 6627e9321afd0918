"""Events sent through the real ingest process are read back through the profile
process (gRPC and HTTP), and erasing the profile suppresses its identifiers."""

from __future__ import annotations

import base64

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, profile_pb2, profile_pb2_grpc

from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e


def ident(id_type: str, value: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=id_type, value=value)


async def profile_when(stub, key, identifier, ready, within: float = 20.0):  # type: ignore[no-untyped-def]
    """GetProfile until `ready(profile)` holds: ingest may update hot state after its ack."""

    async def read():  # type: ignore[no-untyped-def]
        try:
            profile = await stub.GetProfile(
                profile_pb2.GetProfileRequest(identifier=identifier), metadata=bearer(key)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None
        return profile if ready(profile) else None

    return await eventually(read, within, f"the profile of {identifier} ready", every=0.1)


async def test_events_through_ingest_read_back_through_profile(  # type: ignore[no-untyped-def]
    database_url, redis_url, workspace
) -> None:
    http_port = free_port()
    async with as_processes(
        database_url, redis_url, ["ingest", "profile"], {"PROFILE_HTTP_PORT": str(http_port)}
    ) as addresses:
        async with (
            grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
            grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
        ):
            ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
            profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
            traits = {"name": "Ada", "plan": "pro", "email": "ada@example.com", "n": 2**60}
            sent = await ingest.Batch(
                ingest_pb2.BatchRequest(
                    events=[
                        ingest_pb2.Event(
                            message_id="e2e-identify",
                            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                            user_id="u-e2e",
                            anonymous_id="anon-e2e",
                            traits=orjson.dumps(traits),
                        ),
                        ingest_pb2.Event(
                            message_id="e2e-track",
                            type=ingest_pb2.EVENT_TYPE_TRACK,
                            anonymous_id="anon-e2e",
                            event="Order Completed",
                            properties=orjson.dumps({"total": 42}),
                        ),
                    ]
                ),
                metadata=bearer(workspace.ingest),
            )
            assert sent.accepted == 2, sent

            profile = await profile_when(
                profiles,
                workspace.profile,
                ident("user_id", "u-e2e"),
                lambda p: orjson.loads(p.traits or b"{}").get("plan") == "pro",
            )
            assert orjson.loads(profile.traits) == traits
            ids = {(i.type, i.value) for i in profile.identifiers}
            assert {("user_id", "u-e2e"), ("anonymous_id", "anon-e2e")} <= ids
            by_anon = await profiles.GetProfile(
                profile_pb2.GetProfileRequest(identifier=ident("anonymous_id", "anon-e2e")),
                metadata=bearer(workspace.profile),
            )
            assert by_anon.profile_id == profile.profile_id

            timeline = await profiles.ListEvents(
                profile_pb2.ListEventsRequest(identifier=ident("user_id", "u-e2e")),
                metadata=bearer(workspace.profile),
            )
            assert {e.message_id for e in timeline.events} == {"e2e-identify", "e2e-track"}
            tracked = next(e for e in timeline.events if e.message_id == "e2e-track")
            assert tracked.name == "Order Completed"
            assert orjson.loads(tracked.properties) == {"total": 42}

            user = base64.b64encode(f"{workspace.profile}:".encode()).decode()
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{http_port}/v1/profiles/user_id:u-e2e/traits",
                    headers={"Authorization": f"Basic {user}"},
                ) as reply,
            ):
                assert reply.status == 200
                assert (await reply.json())["traits"] == traits

            erased = await profiles.DeleteProfile(
                profile_pb2.DeleteProfileRequest(identifier=ident("user_id", "u-e2e")),
                metadata=bearer(workspace.admin),
            )
            assert erased.events_deleted == 2
            assert erased.identities_deleted >= 2
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await profiles.GetProfile(
                    profile_pb2.GetProfileRequest(identifier=ident("anonymous_id", "anon-e2e")),
                    metadata=bearer(workspace.profile),
                )
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            # Ingest refuses new events carrying an erased identifier.
            again = await ingest.Batch(
                ingest_pb2.BatchRequest(
                    events=[
                        ingest_pb2.Event(
                            message_id="e2e-after",
                            type=ingest_pb2.EVENT_TYPE_TRACK,
                            user_id="u-e2e",
                            event="Came Back",
                        )
                    ]
                ),
                metadata=bearer(workspace.ingest),
            )
            assert again.rejected == 1 and again.accepted == 0
