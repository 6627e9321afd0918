"""Property: account-level audiences in SQL (sql_accounts.py, on SQLite) and the
reference evaluator agree on random histories with group calls (before and after now,
on merged-away profile rows, of erased users, setting and nulling account traits, nested
and literal dotted ones read by dotted names) and
random account-level trees whose account nodes hold the user-level trees of
test_sql_vs_reference."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.segmentation.accounts import account_id_of
from services.segmentation.language import parse_audience
from services.segmentation.reference import ProfileData, evaluate
from services.segmentation.sql_accounts import compile_account_audience, register_accounts
from services.segmentation.tables import accounts
from services.shared.db.tables import events, profiles
from tests.integration.segmentation.test_sql_vs_reference import (
    EQ_VALUES,
    HOUR,
    NOW,
    TRAIT_KEYS,
    _ws_counter,
    engine,
    histories,
    load,
    nested_traits,
    trait_node,
    trees,
)

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the module-scoped SQLite database fixture

GROUPS = ["g1", "g2", "g3"]

account_node = st.builds(
    lambda match, condition: {"account": {"match": match, "condition": condition}},
    st.sampled_from(["any", "all", "none"]),
    trees,
)
account_trees = st.recursive(
    st.one_of(account_node, account_node, trait_node()),
    lambda kids: st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda c: {"any": c}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, kids),
    ),
    max_leaves=3,
)
group_traits = st.dictionaries(
    st.sampled_from(TRAIT_KEYS),
    st.one_of(st.sampled_from([1, "a", "ab", True, None, 2.5]), nested_traits),
    max_size=3,
)
# Calls that set the nested value and the literal dotted key together more often.
path_group_traits = st.fixed_dictionaries(
    {"n": st.builds(lambda x: {"x": x}, st.sampled_from(EQ_VALUES)) | nested_traits},
    optional={"n.x": st.sampled_from([*EQ_VALUES, None])},
)


@st.composite
def group_calls(
    draw: st.DrawFn, n_profiles: int, traits: st.SearchStrategy[dict[str, Any]] = group_traits
) -> list[dict[str, Any]]:
    """(profile index, row of it, group, hours*2 before now, traits) per call."""
    return draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "profile": st.integers(0, n_profiles - 1),
                    "row": st.integers(0, 1),
                    "group": st.sampled_from(GROUPS),
                    "halfhours": st.integers(-2, 12),
                    "traits": st.one_of(st.none(), traits),
                }
            ),
            max_size=6,
        )
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(), definition=account_trees, data=st.data())
def test_account_sql_matches_reference(
    engine: Any, hist: list[dict[str, Any]], definition: Any, data: st.DataObject
) -> None:
    _check(engine, hist, definition, data)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(), definition=trait_node(["n.x", "n.y.z"]), data=st.data())
def test_account_trait_paths_match_reference(
    engine: Any, hist: list[dict[str, Any]], definition: Any, data: st.DataObject
) -> None:
    """Account traits read by dotted names, singled out: in the mixed trees a condition
    on a name meets an account with both a literal dotted key and a nested value too
    rarely."""
    _check(engine, hist, definition, data, path_group_traits)


def _check(
    engine: Any,
    hist: list[dict[str, Any]],
    definition: Any,
    data: st.DataObject,
    traits: st.SearchStrategy[dict[str, Any]] = group_traits,
) -> None:
    ws = f"acct{next(_ws_counter)}"
    node = parse_audience(definition)
    calls = data.draw(group_calls(len(hist), traits))
    erased = data.draw(st.sets(st.integers(0, len(hist) - 1), max_size=1))
    with engine.begin() as conn:
        people = load(conn, ws, hist)
        canonicals = sorted(people)
        rows_of = {
            c: [c + i for i in range(h["rows"])] for c, h in zip(canonicals, hist, strict=True)
        }
        gone = {canonicals[i] for i in erased}
        if gone:
            conn.execute(
                sa.update(profiles).where(profiles.c.profile_id.in_(gone)).values(deleted_at_us=1)
            )
        seq = (conn.execute(sa.select(sa.func.max(events.c.seq))).scalar() or 0) + 1
        stored = []
        for call in calls:
            owner = canonicals[call["profile"]]
            row = rows_of[owner][min(call["row"], len(rows_of[owner]) - 1)]
            stored.append(
                {**call, "owner": owner, "seq": seq, "t": NOW - call["halfhours"] * HOUR // 2}
            )
            conn.execute(
                events.insert().values(
                    seq=seq,
                    workspace_id=ws,
                    message_id=f"g{seq}",
                    type="group",
                    profile_id=row,
                    group_id=call["group"],
                    timestamp_us=stored[-1]["t"],
                    received_at_us=seq,
                    traits=call["traits"] if call["traits"] is not None else sa.null(),
                )
            )
            seq += 1

        # The reference view: accounts named by a call up to now; users the alive
        # canonical profiles behind those calls; traits the latest call setting a key.
        want = set()
        for gid in GROUPS:
            mine = sorted(
                (c for c in stored if c["group"] == gid and c["t"] <= NOW),
                key=lambda c: (c["t"], c["seq"]),
            )
            if not mine:
                continue
            traits: dict[str, Any] = {}
            for c in mine:
                traits.update(c["traits"] or {})
            users = sorted({c["owner"] for c in mine} - gone)
            account = ProfileData(
                traits={k: v for k, v in traits.items() if v is not None},
                members=[people[u] for u in users],
            )
            if evaluate(node, account, NOW):
                want.add(gid)

        conn.execute(register_accounts(ws, "sqlite"))
        names = dict(
            conn.execute(
                sa.select(accounts.c.account_id, accounts.c.group_id).where(
                    accounts.c.workspace_id == ws
                )
            ).all()
        )
        q = compile_account_audience(node, workspace_id=ws, now_us=NOW, dialect="sqlite")
        got = {names[account_id_of(r[0])] for r in conn.execute(q)}
        assert got == want, (definition, calls, hist, erased)
