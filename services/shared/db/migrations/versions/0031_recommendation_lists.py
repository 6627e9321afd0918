"""profile: each profile's top-N items of each recommendation object are kept in the
database (the shared read model ``recommendation_lists``), so a hot-state rebuild
restores the profiles' own lists and recommendation syncs read them without scanning
the hot state; and an object records when a training was asked for, so a deployment
that trains in a job (RECOMMENDATIONS_TRAINING=job) runs it at the job's next run

Revision ID: 0031_recommendation_lists
Revises: 0029_recommendation_popular_goal
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# 0029 is the head of the chain holding recommendation_models.
revision: str = "0031_recommendation_lists"
down_revision: str | Sequence[str] | None = "0029_recommendation_popular_goal"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The key leads with (workspace, object): a training's replace and a sync's keyset
    # read in profile order both use it; no other index.
    op.create_table(
        "recommendation_lists",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("model_key", sa.String(64), primary_key=True),
        sa.Column("profile_id", sa.BigInteger(), primary_key=True),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("trained_at_us", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("recommendation_models") as batch:
        batch.add_column(sa.Column("training_requested_at_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recommendation_models") as batch:
        batch.drop_column("training_requested_at_us")
    op.drop_table("recommendation_lists")
