"""The membership change log: a write model more than one service writes, so it lives
here, below every service, and each writer keeps the same rules.

Tables (migration 0003_segmentation):

- ``memberships``: who is in which audience now, since when.
- ``membership_changes``: the entered/exited log; ``seq`` is gapless and monotonic per
  workspace, in commit order, so WatchChanges and syncs resume from "the last seq I
  saw" without skipping a row that commits late.
- ``change_sequences``: the last change seq of each workspace.

The rule every writer follows (segmentation's backfills, recomputes and realtime
worker; the profile service's erasure): in its transaction, take the workspace's row of
``change_sequences`` first (``lock_change_sequence``: a row lock on Postgres, the write
lock on SQLite), then read the current members, diff and write, and reserve the seqs of
the records it logs with ``take_change_seqs``. Writers of a workspace therefore
serialise, each diff is against committed state and seqs are handed out in commit order.

Segmentation owns the audiences and their evaluation; ``exit_every_audience`` is the one
write another service makes here: an erased person leaves every audience in the same
transaction as the erasure (docs/decisions.md, "Independent services").
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    column,
    delete,
    insert,
    select,
    table,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared.db.engine import dialect_insert
from services.shared.db.tables import Json, metadata

__all__ = [
    "ENTERED",
    "EXITED",
    "audience_keys_read",
    "audience_versions_read",
    "change_sequences",
    "exit_every_audience",
    "lock_change_sequence",
    "membership_changes",
    "memberships",
    "take_change_seqs",
]

# The kinds of a change record.
ENTERED = "entered"
EXITED = "exited"

memberships = Table(
    "memberships",
    metadata,
    Column("workspace_id", String(64), nullable=False),
    Column("audience_id", BigInteger, primary_key=True),
    Column("profile_id", BigInteger, primary_key=True),
    Column("entered_at_us", BigInteger, nullable=False),
    Index("ix_memberships_ws_profile", "workspace_id", "profile_id"),
)

membership_changes = Table(
    "membership_changes",
    metadata,
    # Monotonic per workspace (assigned by the writer under a per-workspace lock), so
    # consumers can resume from "the last seq I saw" without gaps or reordering.
    Column("workspace_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("audience_id", BigInteger, nullable=False),
    Column("profile_id", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),  # entered | exited
    Column("at_us", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    # The person's identifiers as [[type, value], ...] on the exit records an erasure
    # writes (the identities are gone by the time a sync reads them); NULL otherwise.
    Column("identifiers", Json, nullable=True),
    # The W3C trace context of the event that caused the change (realtime records;
    # NULL for batch writers), so a republish from the log continues that trace.
    Column("traceparent", String(64), nullable=True),
    Column("tracestate", String(512), nullable=True),
    # WatchChanges of given audiences (seq > last, in seq order). The workspace column
    # leads on purpose: without it the index is ~10% cheaper to write, but the planner
    # then walks the primary key for one audience's poll (audience_id's physical
    # correlation is low; the constant workspace's is 1): docs/benchmarks.md, session 4.
    Index("ix_membership_changes_audience", "workspace_id", "audience_id", "seq"),
    # GetMembershipHistory: one profile's records (and those of profiles merged into it).
    Index("ix_membership_changes_profile", "workspace_id", "profile_id", "audience_id", "seq"),
)

change_sequences = Table(
    "change_sequences",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

# The read model of segmentation's ``audiences`` table this module needs: the definition
# version an exit is logged under. Segmentation defines and owns the table; these two
# columns are the documented contract (tests/unit/test_service_boundaries.py checks them).
audience_versions_read = table(
    "audiences",
    column("audience_id", BigInteger),
    column("current_version", Integer),
)
# The read model of the same table for finding a live audience by key (the prediction
# service's population: its members are the audience's ``memberships``); the same
# contract test checks these columns.
audience_keys_read = table(
    "audiences",
    column("audience_id", BigInteger),
    column("workspace_id", String),
    column("key", String),
    column("deleted_at_us", BigInteger),
)


async def lock_change_sequence(c: AsyncConnection, ws: str) -> None:
    """Serialise this workspace's membership writers until `c` commits, so change seqs
    are gapless and in commit order."""
    await c.execute(
        dialect_insert(c, change_sequences)
        .values(workspace_id=ws, last_seq=0)
        .on_conflict_do_nothing(index_elements=["workspace_id"])
    )
    # A no-op write: the row lock (Postgres) or write lock (SQLite) is held from here
    # to commit, serialising every membership writer of this workspace.
    await c.execute(
        update(change_sequences)
        .where(change_sequences.c.workspace_id == ws)
        .values(last_seq=change_sequences.c.last_seq)
    )


async def take_change_seqs(c: AsyncConnection, ws: str, n: int) -> int:
    """Reserve n change seqs of the workspace (lock it first); returns the first."""
    last = (
        await c.execute(
            update(change_sequences)
            .where(change_sequences.c.workspace_id == ws)
            .values(last_seq=change_sequences.c.last_seq + n)
            .returning(change_sequences.c.last_seq)
        )
    ).scalar_one()
    return int(last) - n + 1


async def exit_every_audience(
    c: AsyncConnection,
    ws: str,
    survivor_id: int,
    profile_ids: Sequence[int],
    now_us: int,
    identifiers: Sequence[tuple[str, str]],
) -> int:
    """Take a person (the survivor and the ids merged into it) out of every audience
    within the caller's transaction, logging one `exited` change per audience under
    the survivor's id that keeps the person's `identifiers` (erasure deletes their
    identities, and a sync still has to name them to its destination). Used when a
    profile is erased; returns how many audiences it left.
    """
    kept = [[id_type, id_value] for id_type, id_value in sorted(identifiers)]
    await lock_change_sequence(c, ws)
    audiences = audience_versions_read
    rows = (
        await c.execute(
            select(memberships.c.audience_id, audiences.c.current_version)
            .select_from(
                memberships.join(audiences, audiences.c.audience_id == memberships.c.audience_id)
            )
            .where(memberships.c.workspace_id == ws, memberships.c.profile_id.in_(profile_ids))
        )
    ).all()
    versions = {row.audience_id: row.current_version for row in rows}
    if not versions:
        return 0
    await c.execute(
        delete(memberships).where(
            memberships.c.workspace_id == ws, memberships.c.profile_id.in_(profile_ids)
        )
    )
    first = await take_change_seqs(c, ws, len(versions))
    await c.execute(
        insert(membership_changes),
        [
            {
                "workspace_id": ws,
                "seq": first + i,
                "audience_id": audience_id,
                "profile_id": survivor_id,
                "kind": EXITED,
                "at_us": now_us,
                "version": version,
                "identifiers": kept,
            }
            for i, (audience_id, version) in enumerate(sorted(versions.items()))
        ],
    )
    return len(versions)
