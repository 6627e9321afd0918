"""Dotted trait names and computed traits whose filters compare with a trait, through the
segmentation API on real Postgres and Redis: PreviewComputedTrait, the stored values an
audience reads, Preview, ExplainMembership and the errors for refs the language lacks."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, segmentation_pb2

from tests.integration.segmentation.apisupport import Api, name_of, violations

pytestmark = pytest.mark.integration

VIEWED = "Product Viewed"
VIEWS_IN_PREF = {
    "type": "event_count",
    "event": VIEWED,
    "where": [{"property": "category", "op": "eq", "ref": {"trait": "prefs.category"}}],
}


async def _shoppers(api: Api) -> None:
    """u1 prefers shoes (nested); u2's literal "prefs.category" key says hats, over its
    nested shoes; u3 has no preference."""
    views = {"u1": ["shoes", "shoes", "hats"], "u2": ["shoes", "shoes", "shoes", "hats"]}
    views["u3"] = ["shoes"]
    await api.send(
        [
            {"type": "identify", "user_id": "u1", "traits": {"prefs": {"category": "shoes"}}},
            {
                "type": "identify",
                "user_id": "u2",
                "traits": {"prefs.category": "hats", "prefs": {"category": "shoes"}},
            },
            *[
                {"user_id": user, "event": VIEWED, "properties": {"category": category}}
                for user, categories in views.items()
                for category in categories
            ],
        ]
    )


async def _explain(api: Api, key: str, user: str) -> segmentation_pb2.ExplainMembershipResponse:
    return await api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key=key, identifier=common_pb2.Identifier(type="user_id", value=user)
        ),
        metadata=api.admin,
    )


async def _create_computed(api: Api, key: str, definition: Any) -> None:
    await api.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key=key, definition=orjson.dumps(definition)
            )
        ),
        metadata=api.admin,
    )


async def test_computed_trait_counts_views_in_the_preferred_category(api) -> None:  # type: ignore[no-untyped-def]
    await _shoppers(api)
    preview = await api.seg.PreviewComputedTrait(
        segmentation_pb2.PreviewComputedTraitRequest(
            definition=orjson.dumps(VIEWS_IN_PREF), sample_limit=-1
        ),
        metadata=api.admin,
    )
    values = {name_of(v.profile): orjson.loads(v.value) for v in preview.values}
    # u2's literal key wins (one hats view); u3's missing preference matches no view.
    assert values == {"u1": 2, "u2": 1, "u3": 0}

    await _create_computed(api, "views_in_pref", VIEWS_IN_PREF)
    await api.computed_live("views_in_pref")
    await api.create("pref_fans", {"computed": {"key": "views_in_pref", "op": "gte", "value": 2}})
    await api.live("pref_fans")
    assert await api.members("pref_fans") == ["u1"]
    explained = await _explain(api, "pref_fans", "u2")
    assert explained.member is False
    assert (explained.root.kind, explained.root.result) == ("computed", False)
    assert orjson.loads(explained.root.value) == 1
    assert explained.root.summary == "computed trait views_in_pref is 1; needs gte 2"


async def test_preview_and_explain_walk_dotted_trait_names(api) -> None:  # type: ignore[no-untyped-def]
    await _shoppers(api)
    shoes = {"trait": {"name": "prefs.category", "op": "eq", "value": "shoes"}}
    preview = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(shoes), sample_limit=-1),
        metadata=api.admin,
    )
    assert [name_of(r) for r in preview.sample] == ["u1"]
    viewed_own = {
        "event": {
            "name": VIEWED,
            "where": [{"property": "category", "op": "neq", "ref": {"trait": "prefs.category"}}],
        }
    }
    preview = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(viewed_own), sample_limit=-1),
        metadata=api.admin,
    )
    # Both viewed outside their preference; u3 has none, so its view matches nothing.
    assert sorted(name_of(r) for r in preview.sample) == ["u1", "u2"]

    await api.create("shoe_people", shoes)
    await api.live("shoe_people")
    explained = await _explain(api, "shoe_people", "u2")
    assert explained.member is False
    assert (explained.root.path, explained.root.result) == ("trait", False)
    assert orjson.loads(explained.root.value) == "hats"
    assert explained.root.summary == "trait prefs.category is 'hats'; needs eq 'shoes'"
    explained = await _explain(api, "shoe_people", "u1")
    assert explained.member is True
    assert orjson.loads(explained.root.value) == "shoes"
    explained = await _explain(api, "shoe_people", "u3")
    assert (explained.member, explained.root.value) == (False, b"")
    assert explained.root.summary == "trait prefs.category is missing; needs eq 'shoes'"


async def test_refs_outside_the_language_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    bad = {
        "type": "event_count",
        "event": VIEWED,
        "where": [
            {"property": "category", "op": "eq", "ref": {"computed": "views_in_pref"}},
            {"property": "category", "op": "eq", "ref": {"step": 0, "property": "category"}},
        ],
    }
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create_computed(api, "bad", bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error.value) == {
        "computed_trait.definition.where[0].ref.computed": (
            "refs to computed traits are not supported"
        ),
        "computed_trait.definition.where[1].ref.step": (
            "step references are only allowed in funnel steps"
        ),
    }
    listed = await api.seg.ListComputedTraits(
        segmentation_pb2.ListComputedTraitsRequest(), metadata=api.admin
    )
    assert list(listed.computed_traits) == []
