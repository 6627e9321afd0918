"""profile: recommendation objects and the status of their training

Revision ID: 0021_profile_recommendations
Revises: 0001_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0021_profile_recommendations"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "recommendation_models",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("item_events", _JSON, nullable=False),
        sa.Column("item_property", sa.String(255), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("recommend_consumed", sa.Boolean, nullable=False),
        sa.Column("exclusions", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("training_state", sa.String(16), nullable=False),
        sa.Column("training_progress", sa.Float, nullable=False),
        sa.Column("training_started_at_us", sa.BigInteger, nullable=True),
        sa.Column("training_finished_at_us", sa.BigInteger, nullable=True),
        sa.Column("trained_profiles", sa.BigInteger, nullable=False),
        sa.Column("trained_items", sa.BigInteger, nullable=False),
        sa.Column("trained_interactions", sa.BigInteger, nullable=False),
        sa.Column("training_error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("recommendation_models")
