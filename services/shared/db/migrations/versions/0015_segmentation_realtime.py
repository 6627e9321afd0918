"""segmentation: realtime flag on audiences and computed traits; the change log by
profile (GetMembershipHistory reads one profile's records through an index instead of
walking every record of the audience)

Revision ID: 0015_segmentation_realtime
Revises: 0014_segmentation_exit_ids
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_segmentation_realtime"
down_revision: str | Sequence[str] | None = "0014_segmentation_exit_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("audiences", "computed_traits"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("realtime", sa.Boolean(), nullable=False, server_default=sa.false())
            )
    op.create_index(
        "ix_membership_changes_profile",
        "membership_changes",
        ["workspace_id", "profile_id", "audience_id", "seq"],
    )


def downgrade() -> None:
    op.drop_index("ix_membership_changes_profile", table_name="membership_changes")
    for table in ("audiences", "computed_traits"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("realtime")
