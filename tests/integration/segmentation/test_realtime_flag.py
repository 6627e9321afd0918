"""The realtime flag of audiences and computed traits through the API: off unless
asked, kept by updates that leave it unset, and allowed on account-level audiences."""

from __future__ import annotations

import orjson
import pytest
from audiences.v1 import segmentation_pb2

from tests.integration.segmentation.apisupport import Api

pytestmark = pytest.mark.integration

VIEWED = orjson.dumps({"event": {"name": "Viewed"}})


async def test_audience_flag_defaults_off_and_updates_keep_it(api: Api) -> None:
    seg, admin = api.seg, api.admin
    plain = await seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(key="plain", definition=VIEWED)
        ),
        metadata=admin,
    )
    assert plain.realtime is False
    live = await seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(key="live", definition=VIEWED, realtime=True)
        ),
        metadata=admin,
    )
    assert live.realtime is True
    renamed = await seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(key="live", name="Live viewers")
        ),
        metadata=admin,
    )
    assert (renamed.name, renamed.realtime) == ("Live viewers", True)
    off = await seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(key="live", realtime=False)
        ),
        metadata=admin,
    )
    assert off.realtime is False
    got = await seg.GetAudience(segmentation_pb2.GetAudienceRequest(key="live"), metadata=admin)
    assert got.realtime is False


async def test_account_level_audiences_can_be_realtime(api: Api) -> None:
    account = orjson.dumps({"trait": {"name": "plan", "op": "eq", "value": "pro"}})
    created = await api.seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key="accounts", definition=account, account_level=True, realtime=True
            )
        ),
        metadata=api.admin,
    )
    assert (created.account_level, created.realtime) == (True, True)


async def test_computed_trait_flag(api: Api) -> None:
    seg, admin = api.seg, api.admin
    definition = orjson.dumps({"type": "event_count", "event": "Viewed"})
    created = await seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key="views", definition=definition, realtime=True
            )
        ),
        metadata=admin,
    )
    assert created.realtime is True
    kept = await seg.UpdateComputedTrait(
        segmentation_pb2.UpdateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(key="views", name="Views")
        ),
        metadata=admin,
    )
    assert (kept.name, kept.realtime) == ("Views", True)
    off = await seg.UpdateComputedTrait(
        segmentation_pb2.UpdateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(key="views", realtime=False)
        ),
        metadata=admin,
    )
    assert off.realtime is False
