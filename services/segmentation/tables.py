"""Tables owned by the segmentation service, on the shared ``metadata``.

Kept deliberately plain; the Alembic migration and the API arrive in a later phase.

- ``audiences``: one row per audience (its stable key and the current version).
- ``audience_versions``: every definition an audience has had (editing versions it).
- ``memberships`` and ``membership_changes`` (the entered/exited log): segmentation
  writes them, and so does the profile service's erasure, so they are defined with the
  rules every writer follows in ``services/shared/db/membership_log.py`` and re-exported
  here for segmentation's code.
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
    Float,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    false,
)

from services.shared.db.membership_log import membership_changes, memberships
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
    # Evaluated per event by the realtime worker (services/segmentation/realtime).
    Column("realtime", Boolean, nullable=False, default=False, server_default=false()),
    # Share of members held out as control (services/shared/holdout.py) and the goal
    # whose conversions measure the audience's lift (JSON; NULL: none).
    Column("holdout_share", Float, nullable=False, default=0.0, server_default="0"),
    Column("goal", Json, nullable=True),
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

computed_traits = Table(
    "computed_traits",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("definition", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    # Evaluated per event by the realtime worker (services/segmentation/realtime).
    Column("realtime", Boolean, nullable=False, default=False, server_default=false()),
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
