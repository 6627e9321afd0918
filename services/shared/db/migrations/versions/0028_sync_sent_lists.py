"""sync: recommendation syncs remember the digest of the list each profile was last
sent, so a run sends only the lists that changed; and may send each item's metadata

Revision ID: 0028_sync_sent_lists
Revises: 0024_sync_exclude_holdout
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028_sync_sent_lists"
down_revision: str | Sequence[str] | None = "0024_sync_exclude_holdout"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_sent_lists",
        sa.Column("sync_id", sa.String(40), primary_key=True),
        sa.Column("profile_id", sa.BigInteger(), primary_key=True),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("sent_at_us", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("syncs") as batch:
        batch.add_column(
            sa.Column("item_metadata", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("syncs") as batch:
        batch.drop_column("item_metadata")
    op.drop_table("sync_sent_lists")
