"""Segmentation tables for what changes while definitions stay put (migration
0003_segmentation), kept beside the definition tables of tables.py:

- ``audience_status``: per audience, the description, the state (backfilling, live,
  failed) and why it failed (migration 0007), the version whose members are being
  served, the member count and the backfill's progress. GetAudience reads it while a
  backfill writes it.
- ``computed_trait_status``: per computed trait, its name, version, state and why it
  failed.
- ``change_sequences`` (the last change seq of each workspace) is part of the change-log
  contract in ``services/shared/db/membership_log.py``, re-exported here.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text

from services.shared.db.membership_log import change_sequences
from services.shared.db.tables import metadata

__all__ = ["audience_status", "change_sequences", "computed_trait_status"]

audience_status = Table(
    "audience_status",
    metadata,
    Column("audience_id", BigInteger, primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    # The version the memberships reflect; None until the first backfill completes.
    Column("live_version", Integer, nullable=True),
    Column("size", BigInteger, nullable=False, default=0),
    Column("progress_done", BigInteger, nullable=False, default=0),
    Column("progress_total", BigInteger, nullable=False, default=0),
    Column("progress_stage", String(255), nullable=False, default=""),
    Column("failure_reason", Text, nullable=False, default="", server_default=""),
)

computed_trait_status = Table(
    "computed_trait_status",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("name", String(255), nullable=False, default=""),
    Column("version", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("failure_reason", Text, nullable=False, default="", server_default=""),
)
