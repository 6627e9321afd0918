"""profile: each recommendation object keeps its last training's popular items (what
profiles without a list of their own are served), so a hot-state rebuild restores them;
and may name a goal event, whose next items the ranker learns to predict

Revision ID: 0029_recommendation_popular_goal
Revises: 0027_audience_holdouts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# 0027 is the head of the chain holding 0021_profile_recommendations (the table's).
revision: str = "0029_recommendation_popular_goal"
down_revision: str | Sequence[str] | None = "0027_audience_holdouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("recommendation_models") as batch:
        batch.add_column(sa.Column("popular_items", _JSON, nullable=True))
        batch.add_column(sa.Column("goal_event", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recommendation_models") as batch:
        batch.drop_column("goal_event")
        batch.drop_column("popular_items")
