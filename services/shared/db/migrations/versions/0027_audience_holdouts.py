"""segmentation: holdout share and performance goal per audience

Revision ID: 0027_audience_holdouts
Revises: 0021_profile_recommendations
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision: str = "0027_audience_holdouts"
down_revision: str | Sequence[str] | None = "0021_profile_recommendations"
branch_labels: str | Sequence[str] | None = None
# The audiences table is segmentation's (0003, realtime flag in 0015).
depends_on: str | Sequence[str] | None = "0015_segmentation_realtime"


def upgrade() -> None:
    with op.batch_alter_table("audiences") as batch:
        batch.add_column(sa.Column("holdout_share", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("goal", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audiences") as batch:
        batch.drop_column("goal")
        batch.drop_column("holdout_share")
