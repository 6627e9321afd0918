"""Account-level audiences in the database (SQLAlchemy Core, Postgres and SQLite): the
members are accounts (``accounts.py``), with the semantics of ``reference.py``'s
``Account`` node: ``any``/``none`` of the account's users match the inner condition, or
``all`` of them do (an account without users is never "all").

Shape (one statement)::

    SELECT g.account_id + BASE FROM
      (GROUP BY account over the group events up to now joined to their account ids:
       the accounts that exist, and per referenced trait the latest value by
       (timestamp, seq))  g
      LEFT JOIN (per account: COUNT(users), and per account node the users matching its
                 condition, from the (account, canonical user) links joined to ONE
                 sql.compile_audiences rollup over the users) s ON s.gid = g.gid
    WHERE <the account-level tree over those columns>

A user belongs to an account once a group call of any profile merged into it names the
account (timestamp <= now), for as long as the user is alive; erased users leave.
Group traits follow identify traits: the latest call setting a key wins, received
order breaking ties, null removes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Select, and_, case, func, literal, not_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.segmentation import sql
from services.segmentation.accounts import ACCOUNT_MEMBER_BASE
from services.segmentation.language import (
    Account,
    All,
    AnyOf,
    Node,
    Not,
    Trait,
    iter_nodes,
    trait_row_keys,
)
from services.segmentation.tables import accounts
from services.shared.db.tables import events, profiles
from services.shared.filters_sql import JV, match_literal, null_free

__all__ = [
    "compile_account_audience",
    "evaluate_account_audience",
    "register_accounts",
]


def _group_events(ws: str) -> tuple[Any, list[ColumnElement[bool]]]:
    ge = events.alias("ge")
    return ge, [ge.c.workspace_id == ws, ge.c.type == "group", ge.c.group_id.is_not(None)]


def register_accounts(workspace_id: str, dialect: str) -> Any:
    """An INSERT giving every group_id of the workspace's group events an account id.
    Only unknown group ids are selected, so known ones don't burn sequence values; the
    ON CONFLICT covers a concurrent registration of the same account."""
    ge, conds = _group_events(workspace_id)
    # Group first: the anti-join then probes the accounts index once per group_id,
    # not once per group call.
    named = sa.select(ge.c.group_id.label("gid")).where(*conds).group_by(ge.c.group_id).subquery()
    known = sa.select(literal(1)).where(
        accounts.c.workspace_id == workspace_id, accounts.c.group_id == named.c.gid
    )
    new = sa.select(literal(workspace_id, sa.String), named.c.gid).where(not_(known.exists()))
    insert = postgresql.insert(accounts) if dialect == "postgresql" else sqlite.insert(accounts)
    return insert.from_select(["workspace_id", "group_id"], new).on_conflict_do_nothing(
        index_elements=["workspace_id", "group_id"]
    )


def _account_traits(node: Node) -> list[str]:
    """Top-level trait keys read on the account (outside account nodes): each trait
    name's literal key and, for a dotted name, its first part (``trait_row_keys``)."""
    out: set[str] = set()

    def walk(n: Node) -> None:
        if isinstance(n, All | AnyOf):
            for c in n.children:
                walk(c)
        elif isinstance(n, Not):
            walk(n.child)
        elif isinstance(n, Trait):
            out.update(trait_row_keys(n.name))

    walk(node)
    return sorted(out)


class _AccountCompiler:
    def __init__(self, dialect: str, ws: str, now_us: int) -> None:
        self.dialect = dialect
        self.d = sql._dialect(dialect)
        self.ws = ws
        self.now = now_us
        self.trait_cols: dict[str, str] = {}
        self.account_cols: dict[int, str] = {}  # id(Account node) -> column of s
        self.g: Any = None
        self.s: Any = None

    def _trait_text(self, ge: Any, name: str) -> tuple[ColumnElement[bool], Any]:
        """(the call sets the key, the value as JSON text: 'null' for a null)."""
        v = self.d.walk(self.d.document(ge.c.traits), [name])
        return self.d.is_set(v), self.d.json_text(v)

    def _trait_row(self, key: str) -> JV:
        """The account's latest value of top-level trait `key`."""
        return self.d.decode(func.substr(getattr(self.g.c, self.trait_cols[key]), 41))

    def accounts_pass(self, names: list[str]) -> Any:
        """The accounts existing at now, and each referenced trait's latest value,
        encoded ``pad(timestamp) || pad(seq) || json`` so MAX picks the latest."""
        d = self.d
        ge, conds = _group_events(self.ws)
        cols = []
        for i, name in enumerate(names):
            sets, text = self._trait_text(ge, name)
            enc = d.pad(ge.c.timestamp_us) + d.pad(ge.c.seq) + text
            self.trait_cols[name] = f"t{i}"
            cols.append(func.max(d.c(case((sets, enc)))).label(f"t{i}"))
        # The account ids are joined inside the aggregate (an index probe per call), so
        # the outer joins are on one row per account whatever the planner estimates.
        a = accounts
        src = ge.join(a, and_(a.c.workspace_id == self.ws, a.c.group_id == ge.c.group_id))
        return (
            sa.select(a.c.account_id, ge.c.group_id.label("gid"), *cols)
            .select_from(src)
            .where(*conds, ge.c.timestamp_us <= self.now)
            .group_by(a.c.account_id, ge.c.group_id)
            .subquery("g")
        )

    def users_pass(self, quantified: list[Account]) -> Any:
        """Per account: its users and, per account node, how many match its condition."""
        ge, conds = _group_events(self.ws)
        p, c = profiles.alias("gp"), profiles.alias("gc")
        links = (
            sa.select(ge.c.group_id.label("gid"), p.c.canonical_id.label("pid"))
            .select_from(
                ge.join(p, p.c.profile_id == ge.c.profile_id).join(
                    c, c.c.profile_id == p.c.canonical_id
                )
            )
            .where(
                *conds,
                ge.c.timestamp_us <= self.now,
                p.c.workspace_id == self.ws,
                c.c.deleted_at_us.is_(None),
            )
            .group_by(ge.c.group_id, p.c.canonical_id)
            .subquery("links")
        )
        cols = [func.count().label("users")]
        src: Any = links
        if quantified:
            flags = sql.compile_audiences(
                [n.condition for n in quantified],
                workspace_id=self.ws,
                now_us=self.now,
                dialect=self.dialect,
            ).subquery("uf")
            src = links.outerjoin(flags, flags.c.pid == links.c.pid)
            for i, n in enumerate(quantified):
                self.account_cols[id(n)] = f"h{i}"
                hit = getattr(flags.c, f"a{i}")
                cols.append(func.sum(case((hit, 1), else_=0)).label(f"h{i}"))
        return sa.select(links.c.gid, *cols).select_from(src).group_by(links.c.gid).subquery("s")

    def compile(self, node: Node) -> Select[Any]:
        quantified = [n for n in iter_nodes(node) if isinstance(n, Account)]
        self.g = self.accounts_pass(_account_traits(node))
        self.s = self.users_pass(quantified)
        src = self.g.outerjoin(self.s, self.s.c.gid == self.g.c.gid)
        member = (self.g.c.account_id + literal(ACCOUNT_MEMBER_BASE, sa.BigInteger)).label("pid")
        return sa.select(member).select_from(src).where(self.node(node))

    def node(self, n: Node) -> ColumnElement[bool]:
        combined = sql.boolean_node(n, self.node)
        if combined is not None:
            return combined
        if isinstance(n, Trait):
            value = sql.trait_path_value(self.d, self._trait_row, n.name)
            return null_free(match_literal(self.d, value, n.op, n.value))
        if isinstance(n, Account):
            users = func.coalesce(self.s.c.users, 0)
            hits = func.coalesce(getattr(self.s.c, self.account_cols[id(n)]), 0)
            if n.match == "any":
                return null_free(hits > 0)
            if n.match == "none":
                return null_free(hits == 0)
            return null_free(and_(users > 0, hits == users))
        raise sql.UnsupportedInSQL(
            f"{type(n).__name__} conditions are about users: put them inside an account node"
        )


def compile_account_audience(
    definition: Node | Mapping[str, Any], *, workspace_id: str, now_us: int, dialect: str
) -> Select[Any]:
    """A SELECT of the member ids (column ``pid``: ``ACCOUNT_MEMBER_BASE + account_id``)
    of the accounts matching an account-level ``definition`` at ``now_us``. Accounts get
    their ids from ``register_accounts``, which must have run since the last group call."""
    node = sql._as_node(definition)
    return _AccountCompiler(dialect, workspace_id, now_us).compile(node)


async def evaluate_account_audience(
    conn: AsyncConnection, definition: Node | Mapping[str, Any], *, workspace_id: str, now_us: int
) -> set[int]:
    """Run ``compile_account_audience`` on ``conn``: the member ids."""
    q = compile_account_audience(
        definition, workspace_id=workspace_id, now_us=now_us, dialect=conn.dialect.name
    )
    return {int(row[0]) for row in (await conn.execute(q)).all()}
