"""segmentation: accounts (a stable id per workspace and group_id, for account-level
audiences; services/segmentation/tables.py)

Revision ID: 0004_segmentation_accounts
Revises: 0003_segmentation
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_segmentation_accounts"
down_revision: str | Sequence[str] | None = "0003_segmentation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", _ID, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
        sa.UniqueConstraint("workspace_id", "group_id", name="uq_accounts_workspace_group"),
    )


def downgrade() -> None:
    op.drop_table("accounts")
