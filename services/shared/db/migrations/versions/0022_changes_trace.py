"""segmentation: the trace context of the event that caused a change record, so the
changes stream's catch-up republishes a record with the trace it would have carried

Revision ID: 0022_changes_trace
Revises: 0018_prediction
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_changes_trace"
down_revision: str | Sequence[str] | None = "0018_prediction"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("membership_changes") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tracestate", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("membership_changes") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
