"""Our own audience cases for what the shared conformance file does not cover: abandoned
funnels, dynamic step and trait references, audience references with `not`, operators
on missing and mistyped values, identity merges, dotted trait paths and computed traits
whose filters compare with a trait. Same shape as
shared/conformance/audiences.jsonl; the expected members are worked out by hand from
design.md section 6 (comments say why)."""

from __future__ import annotations

from typing import Any

NOW = "2025-01-10T00:00:00Z"


def ev(
    kind: str, who: str, name: str = "", at: str = "2025-01-08T10:00:00Z", **kw: Any
) -> dict[str, Any]:
    """An event; `who` is a user id, or 'anon:<id>' for an anonymous one."""
    e: dict[str, Any] = {"type": kind, "timestamp": at}
    if who.startswith("anon:"):
        e["anonymous_id"] = who[5:]
    else:
        e["user_id"] = who
    if kind == "track":
        e["event"] = name
    if "props" in kw:
        e["properties"] = kw.pop("props")
    if "traits" in kw:
        e["traits"] = kw.pop("traits")
    e.update(kw)
    return e


def _case(
    name: str,
    events: list[dict[str, Any]],
    audiences: dict[str, Any],
    members: dict[str, list[str]],
    computed_traits: dict[str, Any] | None = None,
    computed: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A case; `computed` holds each profile's expected computed-trait values."""
    for i, e in enumerate(events):
        e["message_id"] = f"{name}-{i}"
    universe = sorted(
        {e.get("user_id") or f"anon:{e['anonymous_id']}" for e in events}
        - {
            f"anon:{e['anonymous_id']}"
            for e in events
            if e.get("user_id") and e.get("anonymous_id")
        }
    )
    return {
        "name": name,
        "now": NOW,
        "events": events,
        "computed_traits": computed_traits or {},
        "audiences": audiences,
        "expected": {
            "computed": {p: (computed or {}).get(p, {}) for p in universe},
            "members": members,
        },
    }


STEPS = [{"name": "Cart Viewed"}, {"name": "Checkout Started"}, {"name": "Order Completed"}]

CASES = [
    _case(
        "funnels-abandoned",
        [
            # u1 completes within the hour.
            ev("track", "u1", "Cart Viewed", "2025-01-08T10:00:00Z"),
            ev("track", "u1", "Checkout Started", "2025-01-08T10:10:00Z"),
            ev("track", "u1", "Order Completed", "2025-01-08T10:20:00Z"),
            # u2 stops after checkout.
            ev("track", "u2", "Cart Viewed", "2025-01-08T10:00:00Z"),
            ev("track", "u2", "Checkout Started", "2025-01-08T10:10:00Z"),
            # u3: an abandoned attempt (checkout came 90 minutes later) and a completed one.
            ev("track", "u3", "Cart Viewed", "2025-01-08T09:00:00Z"),
            ev("track", "u3", "Cart Viewed", "2025-01-08T10:00:00Z"),
            ev("track", "u3", "Checkout Started", "2025-01-08T10:30:00Z"),
            ev("track", "u3", "Order Completed", "2025-01-08T10:40:00Z"),
            # u4 started ten minutes before now: still within the hour, counts as abandoned.
            ev("track", "u4", "Cart Viewed", "2025-01-09T23:50:00Z"),
            # u5 never did the first step.
            ev("track", "u5", "Checkout Started", "2025-01-08T10:10:00Z"),
            ev("identify", "u5", traits={"plan": "free"}),
            # u6: equal timestamps are not "strictly increasing".
            ev("track", "u6", "Cart Viewed", "2025-01-08T10:00:00Z"),
            ev("track", "u6", "Checkout Started", "2025-01-08T10:00:00Z"),
            ev("track", "u6", "Order Completed", "2025-01-08T10:05:00Z"),
        ],
        {
            "abandoned": {"funnel": {"steps": STEPS, "within_seconds": 3600, "completed": False}},
            "completed": {"funnel": {"steps": STEPS, "within_seconds": 3600}},
            # The window only constrains the first step: u4's attempt is the only one in it.
            "abandoned_today": {
                "funnel": {
                    "steps": STEPS,
                    "within_seconds": 3600,
                    "window": {"within_days": 1},
                    "completed": False,
                }
            },
        },
        {
            "abandoned": ["u2", "u3", "u4", "u6"],
            "completed": ["u1", "u3"],
            "abandoned_today": ["u4"],
        },
    ),
    _case(
        "dynamic-references",
        [
            ev("track", "u1", "Product Viewed", "2025-01-08T10:00:00Z", props={"sku": "A"}),
            ev("track", "u1", "Product Added", "2025-01-08T10:05:00Z", props={"sku": "A"}),
            ev("track", "u2", "Product Viewed", "2025-01-08T10:00:00Z", props={"sku": "A"}),
            ev("track", "u2", "Product Added", "2025-01-08T10:05:00Z", props={"sku": "B"}),
            # The referenced value is missing: the filter matches nothing.
            ev("track", "u3", "Product Viewed", "2025-01-08T10:00:00Z", props={}),
            ev("track", "u3", "Product Added", "2025-01-08T10:05:00Z", props={"sku": "A"}),
            # Trait references.
            ev("identify", "u1", traits={"home": "US"}),
            ev("track", "u1", "Order Completed", props={"country": "US"}),
            ev("track", "u2", "Order Completed", props={"country": "US"}),
            ev("identify", "u3", traits={"home": "US"}),
            ev("track", "u3", "Order Completed", props={"country": "FR"}),
        ],
        {
            "added_what_they_viewed": {
                "funnel": {
                    "steps": [
                        {"name": "Product Viewed"},
                        {
                            "name": "Product Added",
                            "where": [
                                {
                                    "property": "sku",
                                    "op": "eq",
                                    "ref": {"step": 0, "property": "sku"},
                                }
                            ],
                        },
                    ],
                    "within_seconds": 86400,
                }
            },
            "ordered_at_home": {
                "event": {
                    "name": "Order Completed",
                    "where": [{"property": "country", "op": "eq", "ref": {"trait": "home"}}],
                }
            },
            # neq against a missing reference matches nothing either.
            "ordered_abroad": {
                "event": {
                    "name": "Order Completed",
                    "where": [{"property": "country", "op": "neq", "ref": {"trait": "home"}}],
                }
            },
        },
        {
            "added_what_they_viewed": ["u1"],
            "ordered_at_home": ["u1"],
            "ordered_abroad": ["u3"],
        },
    ),
    _case(
        "audience-references-and-not",
        [
            ev("track", "u1", "Order Completed"),
            ev("identify", "u1", traits={"plan": "pro"}),
            ev("track", "u2", "Order Completed"),
            ev("identify", "u3", traits={"plan": "free"}),
            ev("page", "anon:p1", name="Home"),
        ],
        {
            "buyers": {"event": {"name": "Order Completed"}},
            "non_pro_buyers": {
                "all": [
                    {"audience": {"key": "buyers"}},
                    {"not": {"trait": {"name": "plan", "op": "eq", "value": "pro"}}},
                ]
            },
            # `not` ranges over every profile, including one with only a page view.
            "not_buyers": {"not": {"audience": {"key": "buyers"}}},
            "either": {
                "any": [
                    {"audience": {"key": "non_pro_buyers"}},
                    {"trait": {"name": "plan", "op": "exists"}},
                ]
            },
        },
        {
            "buyers": ["u1", "u2"],
            "non_pro_buyers": ["u2"],
            "not_buyers": ["anon:p1", "u3"],
            "either": ["u1", "u2", "u3"],
        },
    ),
    _case(
        "missing-and-mistyped-values",
        [
            ev("identify", "u1", traits={"age": 30, "tags": ["vip", "beta"]}),
            ev("identify", "u2", traits={"name": "Ada"}),
            ev("identify", "u3", traits={"age": "30", "tags": "vip-list"}),
            # A later null removes the trait.
            ev("identify", "u4", "", "2025-01-08T10:00:00Z", traits={"age": 41}),
            ev("identify", "u4", "", "2025-01-08T11:00:00Z", traits={"age": None}),
        ],
        {
            "age_eq_30": {"trait": {"name": "age", "op": "eq", "value": 30}},
            "age_eq_text_30": {"trait": {"name": "age", "op": "eq", "value": "30"}},
            "age_neq_30": {"trait": {"name": "age", "op": "neq", "value": 30}},
            "age_not_in": {"trait": {"name": "age", "op": "not_in", "value": [30, 41]}},
            "age_in": {"trait": {"name": "age", "op": "in", "value": [30.0, 41]}},
            "age_missing": {"trait": {"name": "age", "op": "not_exists"}},
            "age_lt_100": {"trait": {"name": "age", "op": "lt", "value": 100}},
            "tags_contain_vip": {"trait": {"name": "tags", "op": "contains", "value": "vip"}},
            "age_starts_3": {"trait": {"name": "age", "op": "starts_with", "value": "3"}},
        },
        {
            "age_eq_30": ["u1"],
            "age_eq_text_30": ["u3"],
            "age_neq_30": ["u2", "u3", "u4"],
            "age_not_in": ["u2", "u3", "u4"],
            "age_in": ["u1"],
            "age_missing": ["u2", "u4"],
            "age_lt_100": ["u1"],
            # Array membership for u1, substring for u3's string.
            "tags_contain_vip": ["u1", "u3"],
            "age_starts_3": ["u3"],
        },
    ),
    _case(
        "merges",
        [
            ev("track", "anon:a1", "Order Completed", "2025-01-05T10:00:00Z"),
            ev("track", "anon:a1", "Order Completed", "2025-01-06T10:00:00Z"),
            # This track links a1 to u1: a1's whole history becomes u1's.
            ev("track", "u1", "Order Completed", "2025-01-07T10:00:00Z", anonymous_id="a1"),
            ev("track", "anon:a2", "Order Completed", "2025-01-07T10:00:00Z"),
            ev("identify", "u9", traits={"plan": "free"}),
        ],
        {
            "three_orders": {
                "event": {"name": "Order Completed", "count": {"op": "gte", "value": 3}}
            },
            "one_order": {"event": {"name": "Order Completed", "count": {"op": "eq", "value": 1}}},
            "no_orders": {"event": {"name": "Order Completed", "count": {"op": "eq", "value": 0}}},
        },
        {"three_orders": ["u1"], "one_order": ["anon:a2"], "no_orders": ["u9"]},
    ),
    _case(
        "dotted-trait-paths",
        [
            ev(
                "identify",
                "u1",
                traits={
                    "billing": {
                        "tier": "pro",
                        "addons": ["sso", "audit"],
                        "card": {"brand": "visa"},
                    }
                },
            ),
            # A top-level key spelled with the dot wins over the nested value.
            ev("identify", "u2", traits={"billing.tier": "enterprise", "billing": {"tier": "pro"}}),
            # The intermediate value is not an object: nothing to walk into.
            ev("identify", "u3", traits={"billing": "pro"}),
            # Nested null is missing, like a property.
            ev("identify", "u4", traits={"billing": {"tier": None}}),
            # Arrays are not indexed: "tier" is not a key of a list.
            ev("identify", "u5", traits={"billing": [{"tier": "pro"}]}),
            ev("identify", "u6", traits={"plan": "pro"}),
            ev("identify", "u7", traits={"billing": {"tier": "pro"}, "billing.tier": "free"}),
            # u8's literal key was removed (null) later: the nested value shows through.
            ev(
                "identify",
                "u8",
                at="2025-01-08T10:00:00Z",
                traits={"billing": {"tier": "pro"}, "billing.tier": "free"},
            ),
            ev("identify", "u8", at="2025-01-08T11:00:00Z", traits={"billing.tier": None}),
            ev("track", "u1", "Plan Viewed", props={"plan": "pro"}),
            ev("track", "u2", "Plan Viewed", props={"plan": "pro"}),
            ev("track", "u3", "Plan Viewed", props={"plan": "pro"}),
        ],
        {
            "tier_pro": {"trait": {"name": "billing.tier", "op": "eq", "value": "pro"}},
            "tier_enterprise": {
                "trait": {"name": "billing.tier", "op": "eq", "value": "enterprise"}
            },
            "tier_missing": {"trait": {"name": "billing.tier", "op": "not_exists"}},
            "tier_not_pro": {"trait": {"name": "billing.tier", "op": "neq", "value": "pro"}},
            "has_sso": {"trait": {"name": "billing.addons", "op": "contains", "value": "sso"}},
            "visa": {"trait": {"name": "billing.card.brand", "op": "eq", "value": "visa"}},
            "first_item": {"trait": {"name": "billing.0.tier", "op": "exists"}},
            "billing_set": {"trait": {"name": "billing", "op": "exists"}},
            # Refs walk the same paths; a missing referenced value matches no event.
            "viewed_own_tier": {
                "event": {
                    "name": "Plan Viewed",
                    "where": [{"property": "plan", "op": "eq", "ref": {"trait": "billing.tier"}}],
                }
            },
            "viewed_other_tier": {
                "event": {
                    "name": "Plan Viewed",
                    "where": [{"property": "plan", "op": "neq", "ref": {"trait": "billing.tier"}}],
                }
            },
        },
        {
            "tier_pro": ["u1", "u8"],
            "tier_enterprise": ["u2"],
            "tier_missing": ["u3", "u4", "u5", "u6"],
            "tier_not_pro": ["u2", "u3", "u4", "u5", "u6", "u7"],
            "has_sso": ["u1"],
            "visa": ["u1"],
            "first_item": [],
            # u4's billing is an object (holding a null): present.
            "billing_set": ["u1", "u2", "u3", "u4", "u5", "u7", "u8"],
            "viewed_own_tier": ["u1"],
            # u3's referenced value is missing: its view matches neither.
            "viewed_other_tier": ["u2"],
        },
    ),
    _case(
        "computed-trait-refs",
        [
            ev("identify", "u1", traits={"prefs": {"category": "shoes"}}),
            ev("track", "u1", "Product Viewed", props={"category": "shoes", "price": 10}),
            ev("track", "u1", "Product Viewed", props={"category": "shoes", "price": 20}),
            ev("track", "u1", "Product Viewed", props={"category": "hats", "price": 5}),
            # The literal "prefs.category" key wins: u2 prefers hats.
            ev("identify", "u2", traits={"prefs.category": "hats", "prefs": {"category": "shoes"}}),
            ev("track", "u2", "Product Viewed", props={"category": "shoes", "price": 30}),
            ev("track", "u2", "Product Viewed", props={"category": "hats", "price": 7}),
            ev("track", "u2", "Product Viewed", props={"category": "hats", "price": 9}),
            # No preference: the ref is missing, so no view matches (eq or neq).
            ev("track", "u3", "Product Viewed", props={"category": "shoes", "price": 4}),
            ev("identify", "u4", traits={"prefs": {"category": "shoes"}}),
            # The preference is set on an anonymous profile that this track then links
            # to u5: the trait and the view meet on the merged person.
            ev("identify", "anon:a5", traits={"prefs": {"category": "shoes"}}),
            ev(
                "track",
                "u5",
                "Product Viewed",
                anonymous_id="a5",
                props={"category": "shoes", "price": 12},
            ),
        ],
        {
            "pref_fans": {"computed": {"key": "views_in_pref", "op": "gte", "value": 2}},
            "browsed_elsewhere": {"computed": {"key": "max_price_elsewhere", "op": "exists"}},
        },
        {"pref_fans": ["u1", "u2"], "browsed_elsewhere": ["u1", "u2"]},
        computed_traits={
            "views_in_pref": {
                "type": "event_count",
                "event": "Product Viewed",
                "where": [{"property": "category", "op": "eq", "ref": {"trait": "prefs.category"}}],
            },
            "max_price_elsewhere": {
                "type": "max",
                "event": "Product Viewed",
                "property": "price",
                "where": [
                    {"property": "category", "op": "neq", "ref": {"trait": "prefs.category"}}
                ],
            },
        },
        computed={
            "u1": {"views_in_pref": 2, "max_price_elsewhere": 5},
            "u2": {"views_in_pref": 2, "max_price_elsewhere": 30},
            "u3": {"views_in_pref": 0, "max_price_elsewhere": None},
            "u4": {"views_in_pref": 0, "max_price_elsewhere": None},
            "u5": {"views_in_pref": 1, "max_price_elsewhere": None},
        },
    ),
]


def own_case(name: str) -> dict[str, Any]:
    return next(c for c in CASES if c["name"] == name)


OWN_CASE_NAMES = [c["name"] for c in CASES]
