"""Runs against a real webhook and a real directory: the first run backfills, later
runs deliver only the changes since the cursor, profiles without the id type are
skipped, and every run is recorded."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import grpc
import orjson
import pytest
from audiences.v1 import sync_pb2

from services.shared.errors import field_violations
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import audience_sync, get_sync, run, webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-signing"


async def test_first_run_backfills_then_runs_deliver_only_new_changes(api: SyncApi) -> None:
    log = api.log
    audience = await log.audience("vips")
    ann = await log.profile(email="ann@example.com", user_id="u-ann")
    bob = await log.profile(email="bob@example.com")
    anon = await log.profile(anonymous_id="a-1")  # no email: skipped
    for pid in (ann, bob, anon):
        await log.change(audience, pid, entered=True)
    async with webhook(SECRET) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "vips")

        first = await run(api, sync.id)
        assert (first.status, first.added, first.removed, first.skipped) == (
            "succeeded",
            2,
            0,
            1,
        )
        assert [(c["action"], c["id"]) for c in receiver.applied] == [
            ("added", "ann@example.com"),
            ("added", "bob@example.com"),
        ]
        assert (await get_sync(api, sync.id)).cursor == 3 == first.to_cursor

        carl = await log.profile(email="carl@example.com")
        await log.change(audience, carl, entered=True)
        await log.change(audience, ann, entered=False)
        second = await run(api, sync.id)
        assert (second.added, second.removed, second.from_cursor, second.to_cursor) == (
            1,
            1,
            3,
            5,
        )
        assert [(c["seq"], c["action"], c["id"]) for c in receiver.applied[2:]] == [
            (4, "added", "carl@example.com"),
            (5, "removed", "ann@example.com"),
        ]

        third = await run(api, sync.id)
        assert (third.added, third.removed, third.batches, third.to_cursor) == (0, 0, 0, 5)
        assert len(receiver.applied) == 4

    runs = await api.stub.ListSyncRuns(
        sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=api.metadata
    )
    assert [r.id for r in runs.runs] == [third.id, second.id, first.id]
    assert all(r.finished_at.seconds > 0 and r.status == "succeeded" for r in runs.runs)


@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
async def test_a_file_destination_gets_one_complete_file_per_run(
    api: SyncApi, tmp_path: Path, file_format: str
) -> None:
    log = api.log
    audience = await log.audience("buyers")
    ann = await log.profile(user_id="u-ann")
    bob = await log.profile(user_id="u-bob")
    await log.change(audience, ann, entered=True)
    destination = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="drop",
                kind=sync_pb2.DESTINATION_KIND_FILE,
                directory=str(tmp_path / "out"),
                file_format=file_format,
                batch_size=1,
            )
        ),
        metadata=api.metadata,
    )
    # Removing the only member is meant here: no guardrail.
    sync = await audience_sync(api, destination.id, "buyers", "user_id", max_removal_fraction=1)
    first = await run(api, sync.id)
    await log.change(audience, bob, entered=True)
    await log.change(audience, ann, entered=False)
    second = await run(api, sync.id)

    def read(run_id: str) -> list[dict[str, str]]:
        text = (tmp_path / "out" / f"{sync.id}-{run_id}.{file_format}").read_text()
        if file_format == "csv":
            return list(csv.DictReader(io.StringIO(text)))
        return [{k: str(v) for k, v in orjson.loads(line).items()} for line in text.splitlines()]

    assert [(r["action"], r["id"]) for r in read(first.id)] == [("added", "u-ann")]
    assert [(r["action"], r["id"]) for r in read(second.id)] == [
        ("added", "u-bob"),
        ("removed", "u-ann"),
    ]
    # Only the published files: no partial file is left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{sync.id}-{r.id}.{file_format}" for r in (first, second)
    )
    assert (await get_sync(api, sync.id)).cursor == 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cadence": sync_pb2.SYNC_CADENCE_UNSPECIFIED}, "sync.cadence"),
        ({"source_key": "nope"}, "sync.source_key"),
        ({"id_type": ""}, "sync.id_type"),
        ({"destination_id": "dst_missing"}, "sync.destination_id"),
        ({"source": sync_pb2.SYNC_SOURCE_UNSPECIFIED}, "sync.source"),
        ({"max_removal_fraction": 1.5}, "sync.max_removal_fraction"),
    ],
)
async def test_bad_syncs_are_refused_field_by_field(
    api: SyncApi, overrides: dict[str, object], field: str
) -> None:
    await api.log.audience("vips")
    destination = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="hook",
                kind=sync_pb2.DESTINATION_KIND_WEBHOOK,
                base_url="http://127.0.0.1:9/",
                secret=SECRET,
            )
        ),
        metadata=api.metadata,
    )
    fields: dict[str, object] = {
        "destination_id": destination.id,
        "source": sync_pb2.SYNC_SOURCE_AUDIENCE,
        "source_key": "vips",
        "id_type": "email",
        "cadence": sync_pb2.SYNC_CADENCE_DAILY,
    }
    fields.update(overrides)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateSync(
            sync_pb2.CreateSyncRequest(sync=sync_pb2.Sync(**fields)),  # type: ignore[arg-type]
            metadata=api.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(refused.value)]
    listed = await api.stub.ListSyncs(sync_pb2.ListSyncsRequest(), metadata=api.metadata)
    assert list(listed.syncs) == []
