"""Our own audience cases for what the shared conformance file does not cover: abandoned
funnels, dynamic step and trait references, audience references with `not`, operators
on missing and mistyped values, identity merges, page and screen conditions, window
edges, dotted trait paths, late and retried events, and computed traits on mixed,
missing and tied values, and computed traits whose filters compare with a trait. Same
shape as
tests/data/conformance/audiences.jsonl, and run beside those cases by every conformance
test (conformance_cases.load_cases); the expected results are worked out by hand from
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
    elif name:
        e["name"] = name  # page and screen names
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
    """A case; `computed` gives each profile's expected computed trait values."""
    for i, e in enumerate(events):
        e.setdefault("message_id", f"{name}-{i}")  # a retry names its original's id
    universe = sorted(
        {e.get("user_id") or f"anon:{e['anonymous_id']}" for e in events}
        - {
            f"anon:{e['anonymous_id']}"
            for e in events
            if e.get("user_id") and e.get("anonymous_id")
        }
    )
    expected_computed = computed or {p: {} for p in universe}
    # Every profile has every computed trait: a slip in the hand-written table fails here.
    assert sorted(expected_computed) == universe, name
    assert all(set(v) == set(computed_traits or {}) for v in expected_computed.values()), name
    return {
        "name": name,
        "now": NOW,
        "events": events,
        "computed_traits": computed_traits or {},
        "audiences": audiences,
        "expected": {"computed": expected_computed, "members": members},
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
        "page-and-screen-conditions",
        [
            ev("page", "u1", "Pricing", "2025-01-08T10:00:00Z"),
            ev("track", "u1", "Signed Up", "2025-01-08T12:00:00Z"),
            # A track named like the page: it matches track conditions only.
            ev("track", "u2", "Pricing", "2025-01-08T10:00:00Z"),
            ev("track", "u2", "Signed Up", "2025-01-08T11:00:00Z"),
            ev("screen", "u3", "Pricing", "2025-01-08T10:00:00Z"),
            ev("page", "u4", "Pricing", "2025-01-08T10:00:00Z"),
            ev("page", "u4", "Pricing", "2025-01-09T10:00:00Z"),
            ev("page", "u4", "Home", "2025-01-09T11:00:00Z"),
            # Eight days ago: outside a 7-day window.
            ev("page", "anon:p1", "Pricing", "2025-01-02T00:00:00Z"),
        ],
        {
            "pricing_page": {"event": {"name": "Pricing", "type": "page"}},
            "pricing_tracked": {"event": {"name": "Pricing"}},
            "pricing_screen": {"event": {"name": "Pricing", "type": "screen"}},
            "pricing_page_twice_7d": {
                "event": {
                    "name": "Pricing",
                    "type": "page",
                    "count": {"op": "gte", "value": 2},
                    "window": {"within_days": 7},
                }
            },
            # Ranges over every profile: u2 and u3 never viewed the page.
            "no_pricing_page": {
                "event": {"name": "Pricing", "type": "page", "count": {"op": "eq", "value": 0}}
            },
            # The first step is the page view: u2's tracked "Pricing" does not start one.
            "pricing_to_signup": {
                "funnel": {
                    "steps": [{"name": "Pricing", "type": "page"}, {"name": "Signed Up"}],
                    "within_seconds": 86400,
                }
            },
        },
        {
            "pricing_page": ["anon:p1", "u1", "u4"],
            "pricing_tracked": ["u2"],
            "pricing_screen": ["u3"],
            "pricing_page_twice_7d": ["u4"],
            "no_pricing_page": ["u2", "u3"],
            "pricing_to_signup": ["u1"],
        },
        computed_traits={
            "pricing_page_views": {"type": "event_count", "event": "Pricing", "event_type": "page"},
            "pricing_tracks": {"type": "event_count", "event": "Pricing"},
        },
        computed={
            "anon:p1": {"pricing_page_views": 1, "pricing_tracks": 0},
            "u1": {"pricing_page_views": 1, "pricing_tracks": 0},
            "u2": {"pricing_page_views": 0, "pricing_tracks": 1},
            "u3": {"pricing_page_views": 0, "pricing_tracks": 0},
            "u4": {"pricing_page_views": 2, "pricing_tracks": 0},
        },
    ),
    _case(
        # now = 2025-01-10T00:00:00Z. within_days 1: 01-09T00:00 < t <= 01-10T00:00;
        # between_days [1, 2]: 01-08T00:00 < t <= 01-09T00:00.
        "window-edges",
        [
            ev("track", "u1", "Ping", "2025-01-09T00:00:00Z", props={"n": 1}),  # 1 day ago
            ev("track", "u2", "Ping", "2025-01-09T00:00:00.001Z", props={"n": 2}),
            ev("track", "u3", "Ping", "2025-01-10T00:00:00Z", props={"n": 3}),  # exactly now
            # After now: accepted but not counted, not even without a window.
            ev("track", "u4", "Ping", "2025-01-10T00:00:01Z", props={"n": 4}),
            ev("track", "u5", "Ping", "2025-01-08T00:00:00Z", props={"n": 5}),  # 2 days ago
            ev("track", "u6", "Ping", "2025-01-08T00:00:00.001Z", props={"n": 6}),
        ],
        {
            "ping_1d": {"event": {"name": "Ping", "window": {"within_days": 1}}},
            "ping_1_to_2d": {"event": {"name": "Ping", "window": {"between_days": [1, 2]}}},
            "ping_ever": {"event": {"name": "Ping"}},
            "no_ping": {"event": {"name": "Ping", "count": {"op": "eq", "value": 0}}},
            "no_ping_1d": {
                "event": {
                    "name": "Ping",
                    "count": {"op": "eq", "value": 0},
                    "window": {"within_days": 1},
                }
            },
        },
        {
            "ping_1d": ["u2", "u3"],
            "ping_1_to_2d": ["u1", "u6"],
            "ping_ever": ["u1", "u2", "u3", "u5", "u6"],
            "no_ping": ["u4"],
            "no_ping_1d": ["u1", "u4", "u5", "u6"],
        },
        computed_traits={
            "pings_1d": {"type": "event_count", "event": "Ping", "window": {"within_days": 1}},
            "last_n": {"type": "last", "event": "Ping", "property": "n"},
            "n_1_to_2d": {
                "type": "sum",
                "event": "Ping",
                "property": "n",
                "window": {"between_days": [1, 2]},
            },
        },
        computed={
            "u1": {"pings_1d": 0, "last_n": 1, "n_1_to_2d": 1},
            "u2": {"pings_1d": 1, "last_n": 2, "n_1_to_2d": 0},
            "u3": {"pings_1d": 1, "last_n": 3, "n_1_to_2d": 0},
            "u4": {"pings_1d": 0, "last_n": None, "n_1_to_2d": 0},
            "u5": {"pings_1d": 0, "last_n": 5, "n_1_to_2d": 0},
            "u6": {"pings_1d": 0, "last_n": 6, "n_1_to_2d": 6},
        },
    ),
    _case(
        "dotted-paths",
        [
            ev("identify", "u2", traits={"billing.tier": "silver"}),
            # A key that itself contains the dots matches before the nested path.
            ev("identify", "u3", traits={"billing": {"tier": "bronze"}, "billing.tier": "plat"}),
            # billing is not an object: the path is missing.
            ev("identify", "u4", traits={"billing": "none"}),
            ev(
                "track",
                "u5",
                "Order Completed",
                props={"shipping": {"address": {"country": "FR"}}},
            ),
            ev(
                "track",
                "u1",
                "Order Completed",
                props={"shipping": {"address": {"country": "US"}}},
            ),
        ],
        {
            "silver": {"trait": {"name": "billing.tier", "op": "eq", "value": "silver"}},
            "plat": {"trait": {"name": "billing.tier", "op": "eq", "value": "plat"}},
            "bronze": {"trait": {"name": "billing.tier", "op": "eq", "value": "bronze"}},
            "no_tier": {"trait": {"name": "billing.tier", "op": "not_exists"}},
            "shipped_to_fr": {
                "event": {
                    "name": "Order Completed",
                    "where": [{"property": "shipping.address.country", "op": "eq", "value": "FR"}],
                }
            },
            "shipped_outside_fr": {
                "event": {
                    "name": "Order Completed",
                    "where": [{"property": "shipping.address.country", "op": "neq", "value": "FR"}],
                }
            },
        },
        {
            "silver": ["u2"],
            "plat": ["u3"],
            "bronze": [],
            "no_tier": ["u1", "u4", "u5"],
            "shipped_to_fr": ["u5"],
            "shipped_outside_fr": ["u1"],
        },
    ),
    _case(
        "late-and-retried-events",
        [
            # Received first but timestamped later: it wins.
            ev("identify", "u1", at="2025-01-08T12:00:00Z", traits={"plan": "pro"}),
            ev("identify", "u1", at="2025-01-08T10:00:00Z", traits={"plan": "free"}),
            # Equal timestamps: the later received wins.
            ev("identify", "u2", at="2025-01-08T10:00:00Z", traits={"plan": "free"}),
            ev("identify", "u2", at="2025-01-08T10:00:00Z", traits={"plan": "pro"}),
            # The latest sets null (removes the trait); the late older one does not revive it.
            ev("identify", "u3", at="2025-01-08T10:00:00Z", traits={"plan": "pro"}),
            ev("identify", "u3", at="2025-01-08T11:00:00Z", traits={"plan": None}),
            ev("identify", "u3", at="2025-01-08T09:00:00Z", traits={"plan": "free"}),
            # A retry with the same message_id and other content: the first copy counts.
            ev("track", "u4", "Order Completed", message_id="late-retry", props={"total": 10}),
            ev("track", "u4", "Order Completed", message_id="late-retry", props={"total": 99}),
        ],
        {
            "pro": {"trait": {"name": "plan", "op": "eq", "value": "pro"}},
            "free": {"trait": {"name": "plan", "op": "eq", "value": "free"}},
            "no_plan": {"trait": {"name": "plan", "op": "not_exists"}},
            "big_order": {
                "event": {
                    "name": "Order Completed",
                    "where": [{"property": "total", "op": "gte", "value": 50}],
                }
            },
            "one_order": {"event": {"name": "Order Completed", "count": {"op": "eq", "value": 1}}},
        },
        {
            "pro": ["u1", "u2"],
            "free": [],
            "no_plan": ["u3", "u4"],
            "big_order": [],
            "one_order": ["u4"],
        },
        computed_traits={
            "order_total": {"type": "sum", "event": "Order Completed", "property": "total"},
        },
        computed={
            "u1": {"order_total": 0},
            "u2": {"order_total": 0},
            "u3": {"order_total": 0},
            "u4": {"order_total": 10},
        },
    ),
    _case(
        "computed-edge-values",
        [
            # Only JSON numbers feed sum/avg/min/max: 4 and 2.5 here.
            ev("track", "u1", "Rated", "2025-01-08T10:00:00Z", props={"score": 4}),
            ev("track", "u1", "Rated", "2025-01-08T10:01:00Z", props={"score": "5"}),
            ev("track", "u1", "Rated", "2025-01-08T10:02:00Z", props={"score": True}),
            ev("track", "u1", "Rated", "2025-01-08T10:03:00Z", props={"score": 2.5}),
            # null and absent are missing: first/last skip these events.
            ev("track", "u1", "Rated", "2025-01-08T10:04:00Z", props={"score": None}),
            ev("track", "u1", "Rated", "2025-01-08T10:05:00Z", props={}),
            ev("track", "u2", "Rated", "2025-01-08T10:00:00Z", props={"score": "high"}),
            ev("identify", "u3", traits={"plan": "free"}),
            # Two each: red's latest occurrence is the later one.
            ev("track", "u4", "Rated", "2025-01-08T10:00:00Z", props={"color": "red"}),
            ev("track", "u4", "Rated", "2025-01-08T10:01:00Z", props={"color": "blue"}),
            ev("track", "u4", "Rated", "2025-01-08T10:02:00Z", props={"color": "blue"}),
            ev("track", "u4", "Rated", "2025-01-08T10:03:00Z", props={"color": "red"}),
            # One each at the same instant: received order decides, teal came second.
            ev("track", "u5", "Rated", "2025-01-08T10:00:00Z", props={"color": "green"}),
            ev("track", "u5", "Rated", "2025-01-08T10:00:00Z", props={"color": "teal"}),
            # 1 and 1.0 are one value.
            ev("track", "u6", "Rated", "2025-01-08T10:00:00Z", props={"score": 1}),
            ev("track", "u6", "Rated", "2025-01-08T10:01:00Z", props={"score": 1.0}),
            ev("track", "u6", "Rated", "2025-01-08T10:02:00Z", props={"score": 2}),
        ],
        {
            "avg_score_missing": {"computed": {"key": "avg_score", "op": "not_exists"}},
            # A missing value matches neq: every profile.
            "avg_score_not_3": {"computed": {"key": "avg_score", "op": "neq", "value": 3}},
            "score_sum_over_6": {"computed": {"key": "score_sum", "op": "gt", "value": 6}},
            "top_red": {"computed": {"key": "top_color", "op": "eq", "value": "red"}},
            "saw_teal": {"computed": {"key": "colors", "op": "contains", "value": "teal"}},
            "first_score_text": {
                "computed": {"key": "first_score", "op": "starts_with", "value": "hi"}
            },
        },
        {
            "avg_score_missing": ["u2", "u3", "u4", "u5"],
            "avg_score_not_3": ["u1", "u2", "u3", "u4", "u5", "u6"],
            "score_sum_over_6": ["u1"],
            "top_red": ["u4"],
            "saw_teal": ["u5"],
            "first_score_text": ["u2"],
        },
        computed_traits={
            "ratings": {"type": "event_count", "event": "Rated"},
            "score_sum": {"type": "sum", "event": "Rated", "property": "score"},
            "avg_score": {"type": "avg", "event": "Rated", "property": "score"},
            "min_score": {"type": "min", "event": "Rated", "property": "score"},
            "max_score": {"type": "max", "event": "Rated", "property": "score"},
            "first_score": {"type": "first", "event": "Rated", "property": "score"},
            "last_score": {"type": "last", "event": "Rated", "property": "score"},
            "distinct_scores": {"type": "unique_count", "event": "Rated", "property": "score"},
            "top_color": {"type": "most_frequent", "event": "Rated", "property": "color"},
            "first_color": {"type": "first", "event": "Rated", "property": "color"},
            "last_color": {"type": "last", "event": "Rated", "property": "color"},
            "colors": {"type": "unique_list", "event": "Rated", "property": "color"},
        },
        computed={
            "u1": {
                "ratings": 6,
                "score_sum": 6.5,
                "avg_score": 3.25,
                "min_score": 2.5,
                "max_score": 4,
                "first_score": 4,
                "last_score": 2.5,
                "distinct_scores": 4,  # 4, "5", true, 2.5
                "top_color": None,
                "first_color": None,
                "last_color": None,
                "colors": None,
            },
            "u2": {
                "ratings": 1,
                "score_sum": 0,
                "avg_score": None,
                "min_score": None,
                "max_score": None,
                "first_score": "high",
                "last_score": "high",
                "distinct_scores": 1,
                "top_color": None,
                "first_color": None,
                "last_color": None,
                "colors": None,
            },
            "u3": {
                "ratings": 0,
                "score_sum": 0,
                "avg_score": None,
                "min_score": None,
                "max_score": None,
                "first_score": None,
                "last_score": None,
                "distinct_scores": 0,
                "top_color": None,
                "first_color": None,
                "last_color": None,
                "colors": None,
            },
            "u4": {
                "ratings": 4,
                "score_sum": 0,
                "avg_score": None,
                "min_score": None,
                "max_score": None,
                "first_score": None,
                "last_score": None,
                "distinct_scores": 0,
                "top_color": "red",
                "first_color": "red",
                "last_color": "red",
                "colors": ["blue", "red"],
            },
            "u5": {
                "ratings": 2,
                "score_sum": 0,
                "avg_score": None,
                "min_score": None,
                "max_score": None,
                "first_score": None,
                "last_score": None,
                "distinct_scores": 0,
                "top_color": "teal",
                "first_color": "green",
                "last_color": "teal",
                "colors": ["green", "teal"],
            },
            "u6": {
                "ratings": 3,
                "score_sum": 4,
                "avg_score": 4 / 3,
                "min_score": 1,
                "max_score": 2,
                "first_score": 1,
                "last_score": 2,
                "distinct_scores": 2,
                "top_color": None,
                "first_color": None,
                "last_color": None,
                "colors": None,
            },
        },
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
