"""Erasing a profile deletes its prediction scores (probability, percentile and the
reasons derived from its events) in Postgres and the hot state; other people's stay."""

from __future__ import annotations

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, profile_pb2, profile_pb2_grpc
from sqlalchemy import insert, select

from services.shared import hotstate
from services.shared.db.tables import prediction_scores
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


async def test_delete_profile_erases_its_prediction_scores(
    resources: Resources, workspace: WorkspaceKeys
) -> None:
    ws = workspace.workspace_id
    async with (
        in_process(resources, ["ingest", "profile"]) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        sent = await ingest.Batch(
            ingest_pb2.BatchRequest(
                events=[
                    ingest_pb2.Event(
                        message_id=f"m-{user}",
                        type=ingest_pb2.EVENT_TYPE_TRACK,
                        user_id=user,
                        event="purchase",
                        properties=orjson.dumps({"revenue": 10}),
                    )
                    for user in ("ada", "bob")
                ]
            ),
            metadata=bearer(workspace.ingest),
        )
        assert sent.accepted == 2
        ids = {}
        for user in ("ada", "bob"):
            found = await profiles.GetProfile(
                profile_pb2.GetProfileRequest(
                    identifier=common_pb2.Identifier(type="user_id", value=user)
                ),
                metadata=bearer(workspace.profile),
            )
            ids[user] = int(found.profile_id)
        async with resources.engine.begin() as connection:
            await connection.execute(
                insert(prediction_scores),
                [
                    {
                        "workspace_id": ws,
                        "key": "will_buy",
                        "profile_id": pid,
                        "probability": 0.4,
                        "percentile": 50.0,
                        "scored_at_us": 1,
                        "reasons": [{"feature": "purchase count 7d", "value": "1"}],
                    }
                    for pid in ids.values()
                ],
            )
        for pid in ids.values():
            await resources.redis.hset(
                hotstate.profile_key(ws, pid, "predictions"), "will_buy", b"{}"
            )

        await profiles.DeleteProfile(
            profile_pb2.DeleteProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ada")
            ),
            metadata=bearer(workspace.admin),
        )

    async with resources.engine.connect() as connection:
        left = (
            await connection.execute(
                select(prediction_scores.c.profile_id).where(prediction_scores.c.workspace_id == ws)
            )
        ).scalars()
        assert list(left) == [ids["bob"]]
    assert not await resources.redis.exists(hotstate.profile_key(ws, ids["ada"], "predictions"))
    assert await resources.redis.exists(hotstate.profile_key(ws, ids["bob"], "predictions"))
