"""Tables owned by the segmentation service, on the shared ``metadata``.

Kept deliberately plain; the Alembic migration and the API arrive in a later phase.

- ``audiences``: one row per audience (its stable key and the current version).
- ``audience_versions``: every definition an audience has had (editing versions it).
- ``memberships``: the current members of each audience. ``profile_id`` is the canonical
  profile at the time of evaluation; readers resolve it through ``profiles.canonical_id``
  so a later merge does not lose a membership.
- ``membership_changes``: the entered/exited log, ``seq`` monotonic per workspace.
- ``computed_traits`` / ``computed_trait_values``: definitions and the latest value per
  (profile, key); the value is JSON (null when the trait has no value).
- ``accounts``: a stable id per (workspace, group_id) seen in a group event, so an
  account can be a member of an account-level audience (services/segmentation/accounts.py).
  Only the id lives here: an account's users and traits are read from its group events.
- ``prediction_scores`` is not segmentation's: it is a read model shared through
  services/shared/db/tables.py (the prediction service writes it, prediction conditions
  read it), re-exported here for segmentation's modules.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from services.shared.db.tables import Id, Json, metadata, prediction_scores

__all__ = [
    "accounts",
    "audience_versions",
    "audiences",
    "computed_trait_values",
    "computed_traits",
    "membership_changes",
    "memberships",
    "prediction_scores",
]

audiences = Table(
    "audiences",
    metadata,
    Column("audience_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("name", String(255), nullable=False, default=""),
    Column("current_version", Integer, nullable=False, default=1),
    Column("backfill", Boolean, nullable=False, default=True),
    # Account-level audiences have accounts (group profiles) as members.
    Column("account_level", Boolean, nullable=False, default=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("deleted_at_us", BigInteger, nullable=True),
    UniqueConstraint("workspace_id", "key", name="uq_audiences_workspace_key"),
)

audience_versions = Table(
    "audience_versions",
    metadata,
    Column("audience_id", BigInteger, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("definition", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

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
    # WatchChanges of given audiences (seq > last, in seq order). The workspace column
    # leads on purpose: without it the index is ~10% cheaper to write, but the planner
    # then walks the primary key for one audience's poll (audience_id's physical
    # correlation is low; the constant workspace's is 1): docs/benchmarks.md, session 4.
    Index("ix_membership_changes_audience", "workspace_id", "audience_id", "seq"),
)

computed_traits = Table(
    "computed_traits",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("definition", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

computed_trait_values = Table(
    "computed_trait_values",
    metadata,
    Column("workspace_id", String(64), nullable=False),
    Column("profile_id", BigInteger, primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Json, nullable=True),
    Column("computed_at_us", BigInteger, nullable=False),
    Index("ix_computed_trait_values_ws_key", "workspace_id", "key"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("group_id", String(255), nullable=False),
    UniqueConstraint("workspace_id", "group_id", name="uq_accounts_workspace_group"),
)
