"""segmentation: the identifiers an erased person had, on their exit records; an
index of the merged-away profiles

Erasure deletes the person's identities, so a sync reading an ``exited`` record later
could no longer name them to a destination. The exit records an erasure writes carry
the identifiers as JSON (``[[type, value], ...]``); every other record leaves the
column NULL and is named by the profile's current identifiers.

ListMembers counts a membership row of a profile merged away since it entered for the
survivor, so every page looks up the workspace's merged-away profiles: a partial index
on exactly the expression the queries filter by (``sql.merged_away``, also the
expression of 0006's statistics) finds those few without reading every profile.

Revision ID: 0014_segmentation_exit_ids
Revises: 0007_segmentation_failure_reason
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_segmentation_exit_ids"
down_revision: str | Sequence[str] | None = "0007_segmentation_failure_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_MERGED_AWAY: dict[str, Any] = {
    "postgresql_where": sa.text(
        "(CASE WHEN (canonical_id <> profile_id) THEN true ELSE false END)"
    ),
    "sqlite_where": sa.text("(CASE WHEN (canonical_id != profile_id) THEN 1 ELSE 0 END)"),
}


def upgrade() -> None:
    with op.batch_alter_table("membership_changes") as batch:
        batch.add_column(sa.Column("identifiers", _JSON, nullable=True))
    op.create_index("ix_profiles_merged_away", "profiles", ["workspace_id"], **_MERGED_AWAY)


def downgrade() -> None:
    op.drop_index("ix_profiles_merged_away", table_name="profiles")
    with op.batch_alter_table("membership_changes") as batch:
        batch.drop_column("identifiers")
