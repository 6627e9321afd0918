"""The five-minute tour: real gRPC calls against a running `make run`.

Run from the project root while `make run` is up in another terminal:

    .venv/bin/python examples/tour.py

It sends a few events, reads the profile back by any identifier, defines an audience,
previews and lists it, and asks why someone is a member.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import grpc
import orjson
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from google.protobuf.timestamp_pb2 import Timestamp

KEYS = json.loads(Path("var/demo-workspace.json").read_text())


def auth(kind: str) -> tuple[tuple[str, str], ...]:
    """Metadata with the demo workspace's key of one kind (admin, ingest, profile)."""
    return (("authorization", f"Bearer {KEYS[kind + '_key']}"),)


def event(kind: int, **fields: object) -> ingest_pb2.Event:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    for name in ("properties", "traits"):
        if name in fields:
            fields[name] = orjson.dumps(fields[name])
    return ingest_pb2.Event(message_id=str(uuid.uuid4()), type=kind, timestamp=stamp, **fields)


def main() -> None:
    ingest = ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel("127.0.0.1:50051"))
    segmentation = segmentation_pb2_grpc.SegmentationServiceStub(
        grpc.insecure_channel("127.0.0.1:50052")
    )
    profiles = profile_pb2_grpc.ProfileServiceStub(grpc.insecure_channel("127.0.0.1:50054"))
    user = f"tour-{uuid.uuid4().hex[:6]}"

    print("1. Send events: an anonymous visit, then a sign-up that links it, then orders.")
    sent = ingest.Batch(
        ingest_pb2.BatchRequest(
            events=[
                event(ingest_pb2.EVENT_TYPE_PAGE, anonymous_id=f"anon-{user}", name="Pricing"),
                event(
                    ingest_pb2.EVENT_TYPE_IDENTIFY,
                    user_id=user,
                    anonymous_id=f"anon-{user}",
                    traits={"email": f"{user}@example.com", "plan": "pro"},
                ),
                *[
                    event(
                        ingest_pb2.EVENT_TYPE_TRACK,
                        user_id=user,
                        event="Order Completed",
                        properties={"revenue": 40 + 10 * i},
                    )
                    for i in range(3)
                ],
            ]
        ),
        metadata=auth("ingest"),
    )
    print(f"   accepted={sent.accepted} duplicates={sent.duplicates} rejected={sent.rejected}")

    print("2. Read the profile back by email (any identifier works), from Redis only.")
    profile = _wait_for_profile(
        profiles, common_pb2.Identifier(type="email", value=f"{user}@example.com")
    )
    print(f"   profile {profile.profile_id}: traits {profile.traits.decode()}")
    print(f"   identifiers {[(i.type, i.value) for i in profile.identifiers]}")

    print("3. Define an audience: pro users with at least 2 orders in 30 days.")
    definition = {
        "all": [
            {"trait": {"name": "plan", "op": "eq", "value": "pro"}},
            {
                "event": {
                    "name": "Order Completed",
                    "count": {"op": "gte", "value": 2},
                    "window": {"within_days": 30},
                }
            },
        ]
    }
    preview = segmentation.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(definition), sample_limit=5),
        metadata=auth("admin"),
    )
    print(f"   preview: {preview.size} member(s) before saving anything")
    key = f"loyal_pro_{user.replace('-', '_')}"
    segmentation.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key=key, name="Loyal pro users", definition=orjson.dumps(definition)
            )
        ),
        metadata=auth("admin"),
    )
    audience = _wait_until_live(segmentation, key)
    print(f"   {key}: backfilled from history, {audience.size} member(s)")
    members = segmentation.ListMembers(
        segmentation_pb2.ListMembersRequest(audience_key=key), metadata=auth("admin")
    )
    for member in members.members:
        print(f"   member: {[(i.type, i.value) for i in member.profile.identifiers]}")
    profile = profiles.GetProfile(
        profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=user),
            include=[profile_pb2.PROFILE_SECTION_AUDIENCES],
        ),
        metadata=auth("profile"),
    )
    print(f"   the profile API now shows: {[a.key for a in profile.audiences]}")

    print("4. Why is this user a member?")
    why = segmentation.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key=key, identifier=common_pb2.Identifier(type="user_id", value=user)
        ),
        metadata=auth("admin"),
    )
    for child in why.root.children:
        print(f"   {child.path}: {child.result} ({child.summary})")

    print("5. Bad input gets a precise error and changes nothing.")
    try:
        segmentation.Preview(
            segmentation_pb2.PreviewRequest(
                definition=orjson.dumps(
                    {"event": {"name": "X", "count": {"op": "about", "value": 1}}}
                )
            ),
            metadata=auth("admin"),
        )
    except grpc.RpcError as error:
        print(f"   {error.code().name}: {error.details()}")


def _wait_until_live(
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub, key: str
) -> segmentation_pb2.Audience:
    # Creating an audience backfills from history in the background (state BACKFILLING
    # with progress), then it goes LIVE.
    deadline = time.monotonic() + 30
    while True:
        audience = segmentation.GetAudience(
            segmentation_pb2.GetAudienceRequest(key=key), metadata=auth("admin")
        )
        if audience.state == segmentation_pb2.AUDIENCE_STATE_LIVE or time.monotonic() > deadline:
            return audience
        time.sleep(0.2)


def _wait_for_profile(
    profiles: profile_pb2_grpc.ProfileServiceStub, identifier: common_pb2.Identifier
) -> profile_pb2.Profile:
    # The hot state is written in the same request as the durable commit; this loop
    # only covers a slow first start.
    deadline = time.monotonic() + 10
    while True:
        try:
            return profiles.GetProfile(
                profile_pb2.GetProfileRequest(identifier=identifier), metadata=auth("profile")
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    main()
