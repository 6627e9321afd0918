"""segmentation: why an audience or computed trait failed

A failed backfill or recompute leaves the audience (or computed trait) FAILED; the
reason is kept beside the state so GetAudience and GetComputedTrait can show it. Empty
while nothing has failed.

Revision ID: 0007_segmentation_failure_reason
Revises: 0006_segmentation_merged_stats
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_segmentation_failure_reason"
down_revision: str | Sequence[str] | None = "0006_segmentation_merged_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("audience_status", "computed_trait_status")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(
            table,
            sa.Column("failure_reason", sa.Text(), nullable=False, server_default=""),
        )


def downgrade() -> None:
    for table in _TABLES:
        # SQLite drops a column by copying the table: batch mode does that there.
        with op.batch_alter_table(table) as batch:
            batch.drop_column("failure_reason")
