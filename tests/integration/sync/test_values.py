"""Syncs of computed traits and prediction scores: the first run sends every current
value, later runs only values computed since the cursor (and only once they are older
than the settle delay), profiles without the id type are skipped, the activity filter
skips people with no recent event, and Braze receives the values as custom attributes
that create users."""

from __future__ import annotations

import grpc
import pytest
from audiences.v1 import sync_pb2
from sqlalchemy import delete, insert

from services.prediction.tables import predictions
from services.segmentation.tables import computed_trait_values, computed_traits
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.db.tables import events, prediction_scores
from services.shared.errors import field_violations
from tests.helpers.syncs import create_webhook_destination
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import run
from tests.integration.sync.support import vendor, webhook

pytestmark = pytest.mark.integration

NOW = 1_735_689_600_000_000  # the tests' fixed clock
SECRET = "values-hook"


async def _trait(api: SyncApi, key: str, values: dict[int, object], at_us: int) -> None:
    """Define the computed trait (once) and write values the way segmentation does:
    a changed value's row is replaced, stamped with the computation's instant."""
    async with api.log.engine.begin() as c:
        if not await _has_trait(api, key):
            await c.execute(
                insert(computed_traits).values(
                    workspace_id=api.log.ws,
                    key=key,
                    definition={"type": "event_count", "event": "Bought"},
                    created_at_us=NOW,
                    updated_at_us=NOW,
                )
            )
        for pid, value in values.items():
            await c.execute(
                delete(computed_trait_values).where(
                    computed_trait_values.c.profile_id == pid, computed_trait_values.c.key == key
                )
            )
            await c.execute(
                insert(computed_trait_values).values(
                    workspace_id=api.log.ws,
                    profile_id=pid,
                    key=key,
                    value=value,
                    computed_at_us=at_us,
                )
            )


async def _has_trait(api: SyncApi, key: str) -> bool:
    async with api.log.engine.connect() as c:
        found = await c.execute(
            computed_traits.select().where(
                computed_traits.c.workspace_id == api.log.ws, computed_traits.c.key == key
            )
        )
        return found.first() is not None


async def _value_sync(
    api: SyncApi,
    destination_id: str,
    source: int,
    key: str,
    id_type: str = "email",
    active_within_days: int = 0,
) -> sync_pb2.Sync:
    return await api.stub.CreateSync(
        sync_pb2.CreateSyncRequest(
            sync=sync_pb2.Sync(
                destination_id=destination_id,
                source=source,
                source_key=key,
                id_type=id_type,
                cadence=sync_pb2.SYNC_CADENCE_ONE_TIME,
                active_within_days=active_within_days,
            )
        ),
        metadata=api.metadata,
    )


async def test_a_computed_trait_backfills_then_sends_new_values_once_settled(
    api: SyncApi, clock: FixedClock
) -> None:
    ann = await api.log.profile(email="ann@example.com")
    bob = await api.log.profile(email="bob@example.com")
    cat = await api.log.profile(user_id="cat")  # no email: skipped
    await _trait(api, "orders", {ann: 3, bob: {"n": 5}, cat: 1}, NOW - 120_000_000)
    async with webhook(SECRET) as hook:
        destination = await create_webhook_destination(
            api.stub, api.metadata, hook.url, SECRET, batch_size=2
        )
        sync = await _value_sync(api, destination.id, sync_pb2.SYNC_SOURCE_COMPUTED_TRAIT, "orders")
        first = await run(api, sync.id)
        assert (first.status, first.added, first.skipped) == ("succeeded", 2, 1)
        # Ann's value changes now: not sent until it is older than the settle delay.
        await _trait(api, "orders", {ann: 4}, NOW - 30_000_000)
        assert (await run(api, sync.id)).added == 0
        clock.advance(60)
        third = await run(api, sync.id)
        assert (third.added, third.skipped) == (1, 0)
        assert (await run(api, sync.id)).added == 0  # nothing new: nothing sent
    body = hook.requests[0].json
    assert (body["source"], body["key"], body["id_type"]) == ("computed_trait", "orders", "email")
    assert [(c["action"], c["id"], c["value"]) for c in hook.applied] == [
        ("set", "ann@example.com", 3),
        ("set", "bob@example.com", {"n": 5}),
        ("set", "ann@example.com", 4),
    ]
    got = await api.stub.GetSync(sync_pb2.GetSyncRequest(id=sync.id), metadata=api.metadata)
    assert (got.cursor, got.cursor_profile_id) == (NOW - 30_000_000, ann)


async def test_prediction_scores_to_braze_only_for_recently_active_people(
    api: SyncApi,
) -> None:
    ann = await api.log.profile(email="ann@example.com")
    bob = await api.log.profile(email="bob@example.com")
    async with api.log.engine.begin() as c:
        for i, (pid, days_ago) in enumerate(((ann, 1), (bob, 40))):
            await c.execute(
                insert(events).values(
                    workspace_id=api.log.ws,
                    message_id=f"m{i}",
                    type="track",
                    name="Viewed",
                    profile_id=pid,
                    timestamp_us=NOW - days_ago * US_PER_DAY,
                    received_at_us=NOW,
                )
            )
        for pid, p in ((ann, 0.75), (bob, 0.25)):
            await c.execute(
                insert(prediction_scores).values(
                    workspace_id=api.log.ws,
                    key="churn",
                    profile_id=pid,
                    probability=p,
                    percentile=p * 100,
                    scored_at_us=NOW - 3_600_000_000,
                )
            )
    await _define_prediction(api, "churn")

    def ok(path: str, body: object) -> tuple[int, object]:
        return 201, {"message": "success"}

    async with vendor(ok) as braze:
        destination = await api.stub.CreateDestination(
            sync_pb2.CreateDestinationRequest(
                destination=sync_pb2.Destination(
                    name="braze",
                    kind=sync_pb2.DESTINATION_KIND_BRAZE,
                    base_url=braze.url,
                    secret="rest-key",
                )
            ),
            metadata=api.metadata,
        )
        sync = await _value_sync(
            api, destination.id, sync_pb2.SYNC_SOURCE_PREDICTION, "churn", active_within_days=7
        )
        done = await run(api, sync.id)
    assert (done.added, done.skipped) == (1, 1)  # bob's last event is 40 days old
    assert [body for _, _, body in braze.requests] == [
        {
            "attributes": [
                {"email": "ann@example.com", "churn": 0.75, "_update_existing_only": False}
            ]
        }
    ]


async def _define_prediction(api: SyncApi, key: str) -> None:
    async with api.log.engine.begin() as c:
        await c.execute(
            insert(predictions).values(
                workspace_id=api.log.ws,
                key=key,
                name=key,
                goal={},
                horizon_days=30,
                state="ready",
                created_at_us=NOW,
                updated_at_us=NOW,
            )
        )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"source_key": "nope"}, "sync.source_key"),
        ({"cadence": sync_pb2.SYNC_CADENCE_REALTIME}, "sync.cadence"),
        ({"active_within_days": -1}, "sync.active_within_days"),
        ({"exclude_holdout": True}, "sync.exclude_holdout"),
        ({"source": sync_pb2.SYNC_SOURCE_UNSPECIFIED}, "sync.source"),
    ],
)
async def test_bad_value_syncs_are_refused_field_by_field(
    api: SyncApi, overrides: dict[str, object], field: str
) -> None:
    await _trait(api, "orders", {}, NOW)
    destination = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="hook",
                kind=sync_pb2.DESTINATION_KIND_WEBHOOK,
                base_url="http://127.0.0.1:9/hook",
                secret=SECRET,
            )
        ),
        metadata=api.metadata,
    )
    fields: dict[str, object] = {
        "destination_id": destination.id,
        "source": sync_pb2.SYNC_SOURCE_COMPUTED_TRAIT,
        "source_key": "orders",
        "id_type": "email",
        "cadence": sync_pb2.SYNC_CADENCE_DAILY,
        **overrides,
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateSync(
            sync_pb2.CreateSyncRequest(sync=sync_pb2.Sync(**fields)),  # type: ignore[arg-type]
            metadata=api.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(refused.value)]
    listed = await api.stub.ListSyncs(sync_pb2.ListSyncsRequest(), metadata=api.metadata)
    assert not listed.syncs
