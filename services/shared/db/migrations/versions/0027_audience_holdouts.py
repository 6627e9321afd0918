"""segmentation: holdout share and performance goal per audience; exposures logged
by GetProfile (a shared read model: profile writes, segmentation reads)

Revision ID: 0027_audience_holdouts
Revises: 0021_profile_recommendations
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0027_audience_holdouts"
down_revision: str | Sequence[str] | None = "0021_profile_recommendations"
branch_labels: str | Sequence[str] | None = None
# The audiences table is segmentation's (0003, realtime flag in 0015).
depends_on: str | Sequence[str] | None = "0015_segmentation_realtime"


def upgrade() -> None:
    with op.batch_alter_table("audiences") as batch:
        batch.add_column(sa.Column("holdout_share", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("goal", _JSON, nullable=True))
    op.create_table(
        "audience_exposures",
        sa.Column("exposure_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("audience_key", sa.String(255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("exposed_at_us", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_audience_exposures_key_time",
        "audience_exposures",
        ["workspace_id", "audience_key", "exposed_at_us"],
    )


def downgrade() -> None:
    op.drop_index("ix_audience_exposures_key_time", table_name="audience_exposures")
    op.drop_table("audience_exposures")
    with op.batch_alter_table("audiences") as batch:
        batch.drop_column("goal")
        batch.drop_column("holdout_share")
