"""The sync service's realtime worker survives the loss of `stream:changes` (a Redis
restart without persistence, an operator's flush): it creates its consumer group again
and delivers the changes of the lost stream from the change log, then the new ones."""

from __future__ import annotations

import pytest
from audiences.v1 import sync_pb2

from services.shared.server import Resources
from services.shared.streams import CHANGES_STREAM
from tests.helpers.syncs import create_webhook_sync
from tests.helpers.waiting import eventually
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import announced_change, get_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "recovery"


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """No periodic sweep: only the stream (or the recovery) triggers deliveries."""
    monkeypatch.setenv("SYNC_REALTIME_SWEEP_SECONDS", "3600")


async def test_a_lost_changes_stream_is_recreated_and_nothing_is_lost(
    no_sweep: None, api: SyncApi, resources: Resources
) -> None:
    log = api.log
    audience = await log.audience("vips")

    async def change(pid: int, announce: bool = True) -> int:
        return await announced_change(
            log, resources.redis, (audience, "vips"), pid, announce=announce
        )

    people = [await log.profile(email=f"{name}@example.com") for name in ("ann", "bob", "cat")]
    async with webhook(SECRET) as receiver:
        sync = await create_webhook_sync(
            api.stub,
            api.metadata,
            receiver.url,
            SECRET,
            "vips",
            id_type="email",
            cadence=sync_pb2.SYNC_CADENCE_REALTIME,
        )

        async def delivered(seq: int, emails: list[str]) -> None:
            async def check() -> bool:
                sent = [c["id"] for c in receiver.applied]
                return (await get_sync(api, sync.id)).cursor >= seq and sent == emails

            await eventually(check, 20, f"delivery up to seq {seq} of {emails}")

        await delivered(await change(people[0]), ["ann@example.com"])
        # The stream goes with its group; bob's change was committed but its entry lost.
        await resources.redis.delete(CHANGES_STREAM)
        await change(people[1], announce=False)
        last = await change(people[2])
        await delivered(last, ["ann@example.com", "bob@example.com", "cat@example.com"])
