"""Persistence of accounts (services/segmentation/accounts.py): their ids, their
evaluation in SQL, and what ListMembers and ExplainMembership read about one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.segmentation import sql_accounts
from services.segmentation.accounts import (
    ACCOUNT_ID_TYPE,
    account_id_of,
    member_id,
)
from services.segmentation.model import ProfileRef
from services.segmentation.tables import accounts
from services.shared.db.tables import events, profiles

__all__ = ["AccountStore"]

# Ids per IN list: well under asyncpg's 32,767 parameters.
CHUNK = 5_000


class AccountStore:
    """Accounts of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def register(self, ws: str) -> None:
        """Give every group_id of the workspace's group calls an account id (one
        statement; a no-op when no group call brought a new account)."""
        async with self._engine.begin() as c:
            added = await c.execute(sql_accounts.register_accounts(ws, c.dialect.name))
        if added.rowcount and self._engine.dialect.name == "postgresql":
            # A small table that grew: fresh statistics keep the planner from assuming
            # it is empty (cheap; only when accounts were added).
            async with self._engine.begin() as c:
                await c.execute(text("ANALYZE accounts"))

    async def evaluate(
        self, ws: str, definition: Any, now_us: int, conn: AsyncConnection | None = None
    ) -> set[int]:
        """Member ids of the accounts matching an account-level `definition` at `now_us`
        (on `conn` when given, e.g. a scratch transaction; accounts registered first
        by the caller)."""
        if conn is not None:
            return await sql_accounts.evaluate_account_audience(
                conn, definition, workspace_id=ws, now_us=now_us
            )
        await self.register(ws)
        async with self._engine.connect() as c:
            return await sql_accounts.evaluate_account_audience(
                c, definition, workspace_id=ws, now_us=now_us
            )

    async def resolve(self, ws: str, group_id: str) -> int | None:
        """The member id of the account named `group_id`, or None."""
        query = select(accounts.c.account_id).where(
            accounts.c.workspace_id == ws, accounts.c.group_id == group_id
        )
        async with self._engine.connect() as c:
            found = (await c.execute(query)).scalar()
        return member_id(int(found)) if found is not None else None

    async def refs(self, ws: str, members: Sequence[int]) -> dict[int, ProfileRef]:
        """ProfileRefs of account members: the member id and its ``group_id``."""
        ids = sorted({a for m in members if (a := account_id_of(m)) is not None})
        found: dict[int, ProfileRef] = {}
        async with self._engine.connect() as c:
            for start in range(0, len(ids), CHUNK):
                query = select(accounts.c.account_id, accounts.c.group_id).where(
                    accounts.c.workspace_id == ws,
                    accounts.c.account_id.in_(ids[start : start + CHUNK]),
                )
                for r in await c.execute(query):
                    m = member_id(r.account_id)
                    found[m] = ProfileRef(m, ((ACCOUNT_ID_TYPE, r.group_id),))
        return found

    async def facts(self, ws: str, member: int, now_us: int) -> tuple[dict[str, Any], list[int]]:
        """The account's traits and its users (alive canonical profile ids) at `now_us`,
        read from its group calls as the SQL evaluation reads them."""
        account_id = account_id_of(member)
        p, c = profiles.alias("gp"), profiles.alias("gc")
        group_id = select(accounts.c.group_id).where(accounts.c.account_id == account_id)
        calls = (
            select(
                events.c.seq,
                events.c.timestamp_us,
                events.c.traits,
                c.c.profile_id,
                c.c.deleted_at_us,
            )
            .select_from(
                events.join(p, p.c.profile_id == events.c.profile_id).outerjoin(
                    c, c.c.profile_id == p.c.canonical_id
                )
            )
            .where(
                events.c.workspace_id == ws,
                events.c.type == "group",
                events.c.group_id == group_id.scalar_subquery(),
                events.c.timestamp_us <= now_us,
            )
            .order_by(events.c.timestamp_us, events.c.seq)
        )
        traits: dict[str, Any] = {}
        users: set[int] = set()
        async with self._engine.connect() as conn:
            for r in await conn.execute(calls):
                for key, value in (r.traits or {}).items():
                    traits[key] = value  # in (timestamp, seq) order: the latest wins
                if r.profile_id is not None and r.deleted_at_us is None:
                    users.add(int(r.profile_id))
        return {k: v for k, v in traits.items() if v is not None}, sorted(users)
