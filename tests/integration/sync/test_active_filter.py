"""Audience syncs with "active in the last N days" (`active_within_days`): a member
without an event in the last N days (over every merged profile) is skipped, not sent;
the exit of someone the destination never got is not sent either, and the size
guardrail counts only the exits of people it holds. One-time runs (RunSync) and the
realtime cadence (the sync service's realtime worker, from `stream:changes` entries)
against a real webhook."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import grpc
import pytest
from audiences.v1 import sync_pb2
from sqlalchemy import insert, select

from services.shared.clock import US_PER_DAY
from services.shared.db.tables import events
from services.shared.errors import field_violations
from services.shared.server import Resources
from services.sync.tables import syncs
from tests.helpers.syncs import create_webhook_destination, create_webhook_sync
from tests.helpers.waiting import eventually
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import announced_change, get_sync, run
from tests.integration.sync.support import T0, WebhookReceiver, webhook

pytestmark = pytest.mark.integration

SECRET = "active-filter"
NOW = T0  # the tests' fixed clock


async def _seen(api: SyncApi, pid: int, days_ago: int) -> None:
    """An event of the profile `days_ago` days before the test clock's now."""
    async with api.log.engine.begin() as c:
        await c.execute(
            insert(events).values(
                workspace_id=api.log.ws,
                message_id=f"m{pid}-{days_ago}",
                type="track",
                name="Viewed",
                profile_id=pid,
                timestamp_us=NOW - days_ago * US_PER_DAY,
                received_at_us=NOW,
            )
        )


async def _person(api: SyncApi, name: str, days_ago: int) -> int:
    pid = await api.log.profile(email=f"{name}@example.com")
    await _seen(api, pid, days_ago)
    return pid


async def _holds(api: SyncApi, sync_id: str) -> int:
    """How many members the destination holds from the sync, by the sync's count."""
    async with api.log.engine.connect() as c:
        found = await c.execute(select(syncs.c.delivered_members).where(syncs.c.sync_id == sync_id))
        return int(found.scalar_one())


def _sent(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    return [(c["action"], c["id"]) for c in receiver.applied]


async def test_one_time_runs_send_only_recently_active_members(api: SyncApi) -> None:
    log = api.log
    audience = await log.audience("vips")
    ann = await _person(api, "ann", 1)
    bob = await _person(api, "bob", 40)  # long inactive
    for pid in (ann, bob):
        await log.change(audience, pid, entered=True)
    async with webhook(SECRET) as receiver:
        sync = await create_webhook_sync(
            api.stub,
            api.metadata,
            receiver.url,
            SECRET,
            "vips",
            id_type="email",
            active_within_days=7,
        )
        assert sync.active_within_days == 7

        first = await run(api, sync.id)
        assert (first.status, first.added, first.removed, first.skipped) == (
            "succeeded",
            1,
            0,
            1,
        )
        assert _sent(receiver) == [("added", "ann@example.com")]
        assert await _holds(api, sync.id) == 1

        # Bob was never sent: his exit is skipped, and the guardrail (50% of the one
        # member the destination holds) does not count it.
        await log.change(audience, bob, entered=False)
        second = await run(api, sync.id)
        assert (second.status, second.added, second.removed, second.skipped) == (
            "succeeded",
            0,
            0,
            1,
        )
        assert len(receiver.applied) == 1

        # Entries: the active newcomer is sent, the inactive one skipped; an inactive
        # person merged into an active one counts as active.
        cat = await _person(api, "cat", 2)
        dan = await _person(api, "dan", 30)
        eve = await _person(api, "eve", 100)
        eve_old = await log.profile()
        await _seen(api, eve_old, 3)
        await log.merge(eve_old, eve)
        for pid in (cat, dan, eve):
            await log.change(audience, pid, entered=True)
        third = await run(api, sync.id)
        assert (third.added, third.removed, third.skipped) == (2, 0, 1)
        assert _sent(receiver)[1:] == [("added", "cat@example.com"), ("added", "eve@example.com")]

        # Exits of people the destination holds are sent, even once they are inactive;
        # dan's is not (never sent).
        await log.change(audience, dan, entered=False)
        await log.change(audience, ann, entered=False)
        fourth = await run(api, sync.id)
        assert (fourth.added, fourth.removed, fourth.skipped) == (0, 1, 1)
        assert _sent(receiver)[3:] == [("removed", "ann@example.com")]
        assert await _holds(api, sync.id) == 2

        # Ann comes back active: sent again.
        await _seen(api, ann, 0)
        await log.change(audience, ann, entered=True)
        fifth = await run(api, sync.id)
        assert (fifth.added, fifth.skipped) == (1, 0)
        assert _sent(receiver)[4:] == [("added", "ann@example.com")]


async def test_a_file_destination_remembers_whom_it_got_once_the_file_is_written(
    api: SyncApi, tmp_path: Path
) -> None:
    """A file is published at the end of its run, so whom it holds is written then."""
    log = api.log
    audience = await log.audience("vips")
    ann = await _person(api, "ann", 1)
    bob = await _person(api, "bob", 40)
    for pid in (ann, bob):
        await log.change(audience, pid, entered=True)
    destination = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="drop",
                kind=sync_pb2.DESTINATION_KIND_FILE,
                directory=str(tmp_path),
                file_format="csv",
                batch_size=1,
            )
        ),
        metadata=api.metadata,
    )
    sync = await api.stub.CreateSync(
        sync_pb2.CreateSyncRequest(
            sync=sync_pb2.Sync(
                destination_id=destination.id,
                source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                source_key="vips",
                id_type="email",
                cadence=sync_pb2.SYNC_CADENCE_ONE_TIME,
                max_removal_fraction=1,
                active_within_days=7,
            )
        ),
        metadata=api.metadata,
    )

    def written(run_id: str) -> list[tuple[str, str]]:
        text = (tmp_path / f"{sync.id}-{run_id}.csv").read_text()
        return [(r["action"], r["id"]) for r in csv.DictReader(io.StringIO(text))]

    first = await run(api, sync.id)
    assert written(first.id) == [("added", "ann@example.com")]
    # In one run: cat enters and leaves again, bob (never sent) and ann leave.
    cat = await _person(api, "cat", 2)
    await log.change(audience, cat, entered=True)
    await log.change(audience, cat, entered=False)
    await log.change(audience, bob, entered=False)
    await log.change(audience, ann, entered=False)
    second = await run(api, sync.id)
    assert written(second.id) == [
        ("added", "cat@example.com"),
        ("removed", "cat@example.com"),
        ("removed", "ann@example.com"),
    ]
    assert (second.added, second.removed, second.skipped) == (1, 2, 1)
    assert await _holds(api, sync.id) == 0


async def test_the_filter_cannot_be_turned_on_or_off_but_n_may_change(api: SyncApi) -> None:
    await api.log.audience("vips")
    async with webhook(SECRET) as receiver:
        plain = await create_webhook_sync(
            api.stub, api.metadata, receiver.url, SECRET, "vips", id_type="email"
        )
        filtered = await create_webhook_sync(
            api.stub,
            api.metadata,
            receiver.url,
            SECRET,
            "vips",
            id_type="email",
            active_within_days=7,
        )
        for sync, days in ((plain, 7), (filtered, 0)):
            changed = sync_pb2.Sync()
            changed.CopyFrom(sync)
            changed.active_within_days = days
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.stub.UpdateSync(
                    sync_pb2.UpdateSyncRequest(sync=changed), metadata=api.metadata
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sync.active_within_days" in [v.field for v in field_violations(refused.value)]
        longer = sync_pb2.Sync()
        longer.CopyFrom(filtered)
        longer.active_within_days = 30
        updated = await api.stub.UpdateSync(
            sync_pb2.UpdateSyncRequest(sync=longer), metadata=api.metadata
        )
        assert updated.active_within_days == 30


@pytest.mark.parametrize("days", [-1, 3651])
async def test_a_bad_number_of_days_is_refused(api: SyncApi, days: int) -> None:
    await api.log.audience("vips")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create_webhook_sync(
            api.stub,
            api.metadata,
            "http://127.0.0.1:9/hook",
            SECRET,
            "vips",
            active_within_days=days,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sync.active_within_days" in [v.field for v in field_violations(refused.value)]


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The realtime worker sweeps once, at its start (before the sync exists): every
    delivery below is triggered by a `stream:changes` entry."""
    monkeypatch.setenv("SYNC_REALTIME_SWEEP_SECONDS", "3600")


async def test_realtime_syncs_send_only_recently_active_members(
    no_sweep: None, api: SyncApi, resources: Resources
) -> None:
    log = api.log
    audience = await log.audience("vips")

    async def change(pid: int, entered: bool) -> int:
        return await announced_change(log, resources.redis, (audience, "vips"), pid, entered)

    ann = await _person(api, "ann", 1)
    bob = await _person(api, "bob", 40)
    async with webhook(SECRET) as receiver:
        sync = await create_webhook_sync(
            api.stub,
            api.metadata,
            receiver.url,
            SECRET,
            "vips",
            id_type="email",
            cadence=sync_pb2.SYNC_CADENCE_REALTIME,
            active_within_days=7,
            # Ann's exit may come in the run that adds cat: out of one member.
            max_removal_fraction=1,
        )

        async def delivered(expected: list[tuple[str, str]], seq: int, skipped: int) -> None:
            async def check() -> bool:
                got = await get_sync(api, sync.id)
                runs = await api.stub.ListSyncRuns(
                    sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=api.metadata
                )
                # A run's record is written after its cursor: wait for both.
                return (
                    got.cursor >= seq
                    and _sent(receiver) == expected
                    and sum(r.skipped for r in runs.runs) == skipped
                )

            await eventually(check, 20, f"the realtime sync at seq {seq} with {expected}")

        await change(ann, True)
        # Bob's entry is skipped.
        await delivered([("added", "ann@example.com")], await change(bob, True), 1)
        cat = await _person(api, "cat", 2)
        dan = await _person(api, "dan", 30)
        await change(cat, True)
        await change(dan, True)
        await change(bob, False)
        last = await change(ann, False)
        await delivered(
            [
                ("added", "ann@example.com"),
                ("added", "cat@example.com"),
                ("removed", "ann@example.com"),
            ],
            last,
            3,  # and dan's entry and bob's exit
        )
        assert await _holds(api, sync.id) == 1


async def test_event_syncs_refuse_the_filter(api: SyncApi) -> None:
    destination = await create_webhook_destination(
        api.stub, api.metadata, "http://127.0.0.1:9/hook", SECRET
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateSync(
            sync_pb2.CreateSyncRequest(
                sync=sync_pb2.Sync(
                    destination_id=destination.id,
                    source=sync_pb2.SYNC_SOURCE_EVENTS,
                    id_type="user_id",
                    cadence=sync_pb2.SYNC_CADENCE_REALTIME,
                    active_within_days=7,
                )
            ),
            metadata=api.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sync.active_within_days" in [v.field for v in field_violations(refused.value)]
