"""segmentation: audiences, versions, memberships, change log, computed traits, scores,
and their status rows (services/segmentation/tables.py and status_tables.py)

Revision ID: 0003_segmentation
Revises: 0001_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_segmentation"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audiences",
        sa.Column("audience_id", _ID, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("backfill", sa.Boolean(), nullable=False),
        sa.Column("account_level", sa.Boolean(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("audience_id"),
        sa.UniqueConstraint("workspace_id", "key", name="uq_audiences_workspace_key"),
    )
    op.create_table(
        "audience_versions",
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", "version"),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("entered_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", "profile_id"),
    )
    op.create_index("ix_memberships_ws_profile", "memberships", ["workspace_id", "profile_id"])
    op.create_table(
        "membership_changes",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "seq"),
    )
    op.create_index(
        "ix_membership_changes_audience",
        "membership_changes",
        ["workspace_id", "audience_id", "seq"],
    )
    op.create_table(
        "audience_status",
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("live_version", sa.Integer(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("progress_done", sa.BigInteger(), nullable=False),
        sa.Column("progress_total", sa.BigInteger(), nullable=False),
        sa.Column("progress_stage", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("audience_id"),
    )
    op.create_table(
        "computed_trait_status",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "key"),
    )
    op.create_table(
        "change_sequences",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id"),
    )
    op.create_table(
        "computed_traits",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "key"),
    )
    op.create_table(
        "computed_trait_values",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", _JSON, nullable=True),
        sa.Column("computed_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "key"),
    )
    op.create_index(
        "ix_computed_trait_values_ws_key", "computed_trait_values", ["workspace_id", "key"]
    )
    op.create_table(
        "prediction_scores",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("percentile", sa.Float(), nullable=False),
        sa.Column("scored_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", "profile_id"),
    )


def downgrade() -> None:
    op.drop_table("prediction_scores")
    op.drop_index("ix_computed_trait_values_ws_key", table_name="computed_trait_values")
    op.drop_table("computed_trait_values")
    op.drop_table("computed_traits")
    op.drop_table("change_sequences")
    op.drop_table("computed_trait_status")
    op.drop_table("audience_status")
    op.drop_index("ix_membership_changes_audience", table_name="membership_changes")
    op.drop_table("membership_changes")
    op.drop_index("ix_memberships_ws_profile", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("audience_versions")
    op.drop_table("audiences")
