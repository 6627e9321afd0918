"""sync: audience syncs that leave the audience's holdout (control) group out

Revision ID: 0024_sync_exclude_holdout
Revises: 0023_sync_values
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_sync_exclude_holdout"
down_revision: str | Sequence[str] | None = "0023_sync_values"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("syncs") as batch:
        batch.add_column(
            sa.Column("exclude_holdout", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("syncs") as batch:
        batch.drop_column("exclude_holdout")
