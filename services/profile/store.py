"""Postgres side of the profile service: timelines and erasure (never on the hot path).

Profiles merge by pointing ``profiles.canonical_id`` at the survivor, so "the profile"
here is always the survivor and every profile whose canonical id leads to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    cast,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from services.profile.model import Erasure, Identifier, TimelineEvent
from services.shared.db.membership_log import exit_every_audience
from services.shared.db.tables import (
    events,
    identities,
    prediction_scores,
    profile_traits,
    profiles,
    recommendation_lists,
    suppressions,
)

# Merge chains longer than this are a writer bug; stop instead of looping.
MAX_MERGE_HOPS = 16


def _payload_text(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A JSON column as its text; a JSON null reads as absent (SQL NULL), as before."""
    return func.nullif(cast(column, Text), "null")


class ProfileStore:
    """SQL access of the profile service."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def resolve(self, workspace_id: str, identifier: Identifier) -> int | None:
        """The surviving, undeleted profile id an identifier belongs to (None if none)."""
        async with self._engine.connect() as connection:
            return await _resolve(connection, workspace_id, identifier)

    async def list_events(
        self,
        workspace_id: str,
        survivor_id: int,
        names: Sequence[str],
        limit: int,
        before: tuple[int, int] | None,
    ) -> list[TimelineEvent]:
        """Events of the profile (and the profiles merged into it), newest first.

        `before` is the (timestamp_us, seq) of the last event of the previous page; the
        order (timestamp desc, seq desc) is total, so pages neither skip nor repeat.
        """
        async with self._engine.connect() as connection:
            members = await _members(connection, workspace_id, survivor_id)
            query = select(
                events.c.seq,
                events.c.message_id,
                events.c.type,
                events.c.name,
                events.c.timestamp_us,
                # As JSON text, passed on as it is: decoded, an integer beyond 64 bits
                # (which jsonb keeps exactly) could not be encoded again.
                _payload_text(events.c.properties).label("properties"),
                _payload_text(events.c.traits).label("traits"),
                _payload_text(events.c.context).label("context"),
                events.c.user_id,
                events.c.anonymous_id,
            ).where(events.c.workspace_id == workspace_id, events.c.profile_id.in_(members))
            if names:
                query = query.where(events.c.name.in_(names))
            if before is not None:
                timestamp_us, seq = before
                query = query.where(
                    or_(
                        events.c.timestamp_us < timestamp_us,
                        and_(events.c.timestamp_us == timestamp_us, events.c.seq < seq),
                    )
                )
            query = query.order_by(events.c.timestamp_us.desc(), events.c.seq.desc()).limit(limit)
            rows = (await connection.execute(query)).all()
        return [TimelineEvent(**row._mapping) for row in rows]

    @asynccontextmanager
    async def erasing(
        self, workspace_id: str, survivor_id: int, now_us: int
    ) -> AsyncIterator[Erasure]:
        """Erase a person in one transaction, committed when the block exits cleanly
        (the caller erases what Redis holds of the events inside the block, so a
        failure there leaves Postgres as it was and a retry does everything again).

        Deletes the events, identities, traits, prediction scores and recommendation
        lists of the survivor and every profile merged into it, marks those profiles
        deleted, records every identifier in
        ``suppressions`` (ingest refuses events carrying them) and exits the person's
        audience memberships with records that keep those identifiers. The person's
        group calls stay as facts of their accounts (group_id, timestamp, the account
        traits) with everything about the person removed (user and anonymous ids,
        previous id, properties, context), so an account is not erased with one of
        its users; the profile they point at is deleted, so it is nobody's user.
        """
        async with self._engine.begin() as connection:
            members = sorted(await _members(connection, workspace_id, survivor_id))
            owned = (identities.c.workspace_id == workspace_id) & identities.c.profile_id.in_(
                members
            )
            found = (
                await connection.execute(
                    select(identities.c.id_type, identities.c.id_value).where(owned)
                )
            ).all()
            identifiers = [(row.id_type, row.id_value) for row in found]
            theirs = (events.c.workspace_id == workspace_id) & events.c.profile_id.in_(members)
            deleted = await connection.execute(
                delete(events).where(theirs, events.c.type != "group").returning(events.c.seq)
            )
            seqs = [int(seq) for seq in deleted.scalars()]
            kept = await connection.execute(
                update(events)
                .where(theirs, events.c.type == "group")
                .values(
                    user_id=None,
                    anonymous_id=None,
                    previous_id=None,
                    properties=null(),
                    context=null(),
                )
                .returning(events.c.seq)
            )
            seqs += [int(seq) for seq in kept.scalars()]
            await connection.execute(delete(identities).where(owned))
            await connection.execute(
                delete(profile_traits).where(
                    profile_traits.c.workspace_id == workspace_id,
                    profile_traits.c.profile_id.in_(members),
                )
            )
            # A score (with its reasons) is derived from the person's events: erased too.
            await connection.execute(
                delete(prediction_scores).where(
                    prediction_scores.c.workspace_id == workspace_id,
                    prediction_scores.c.profile_id.in_(members),
                )
            )
            # So are the person's recommendation lists (the hot state's copy goes with
            # the rest of the profile's keys).
            await connection.execute(
                delete(recommendation_lists).where(
                    recommendation_lists.c.workspace_id == workspace_id,
                    recommendation_lists.c.profile_id.in_(members),
                )
            )
            await connection.execute(
                update(profiles)
                .where(profiles.c.workspace_id == workspace_id, profiles.c.profile_id.in_(members))
                .values(deleted_at_us=now_us)
            )
            await _suppress(connection, workspace_id, identifiers, now_us)
            exited = await exit_every_audience(
                connection, workspace_id, survivor_id, members, now_us, identifiers
            )
            yield Erasure(members, identifiers, sorted(seqs), exited)


async def _resolve(
    connection: AsyncConnection, workspace_id: str, identifier: Identifier
) -> int | None:
    row = (
        await connection.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == workspace_id,
                identities.c.id_type == identifier.type,
                identities.c.id_value == identifier.value,
            )
        )
    ).first()
    if row is None:
        return None
    profile_id = int(row.profile_id)
    for _ in range(MAX_MERGE_HOPS):
        current = (
            await connection.execute(
                select(profiles.c.canonical_id, profiles.c.deleted_at_us).where(
                    profiles.c.workspace_id == workspace_id, profiles.c.profile_id == profile_id
                )
            )
        ).first()
        if current is None or current.deleted_at_us is not None:
            return None
        if int(current.canonical_id) == profile_id:
            return profile_id
        profile_id = int(current.canonical_id)
    return profile_id


async def _members(connection: AsyncConnection, workspace_id: str, survivor_id: int) -> set[int]:
    """The survivor and every profile merged into it, directly or through a chain."""
    members = {survivor_id}
    frontier = {survivor_id}
    for _ in range(MAX_MERGE_HOPS):
        rows = await connection.execute(
            select(profiles.c.profile_id).where(
                profiles.c.workspace_id == workspace_id, profiles.c.canonical_id.in_(frontier)
            )
        )
        frontier = {int(row.profile_id) for row in rows} - members
        if not frontier:
            break
        members |= frontier
    return members


async def _suppress(
    connection: AsyncConnection,
    workspace_id: str,
    identifiers: Sequence[tuple[str, str]],
    now_us: int,
) -> None:
    """Record identifiers as suppressed (re-activating earlier suppressions of them)."""
    if not identifiers:
        return
    # Delete-then-insert is an upsert that reads the same on Postgres and SQLite.
    await connection.execute(
        delete(suppressions).where(
            suppressions.c.workspace_id == workspace_id,
            tuple_(suppressions.c.id_type, suppressions.c.id_value).in_(list(identifiers)),
        )
    )
    await connection.execute(
        insert(suppressions),
        [
            {
                "workspace_id": workspace_id,
                "id_type": id_type,
                "id_value": id_value,
                "created_at_us": now_us,
                "active": True,
            }
            for id_type, id_value in identifiers
        ],
    )
