"""prediction: predictions (with a job lease and progress), their versioned models;
prediction_scores keyed by workspace with reasons

``prediction_scores`` had (key, profile_id) as its key, so two workspaces could not both
score a prediction of the same key; the workspace now leads the key, the top reasons
join each score, and an index serves ListScores by percentile. The table held no rows
before this revision (nothing wrote it), but it is copied anyway.

Revision ID: 0018_prediction
Revises: 0015_segmentation_realtime
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018_prediction"
down_revision: str | Sequence[str] | None = "0015_segmentation_realtime"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SCORE_COLUMNS = "workspace_id, key, profile_id, probability, percentile, scored_at_us"


def _scores_table(name: str, primary_key: list[str], reasons: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("percentile", sa.Float(), nullable=False),
        sa.Column("scored_at_us", sa.BigInteger(), nullable=False),
    ]
    if reasons:
        columns.append(sa.Column("reasons", _JSON, nullable=True))
    op.create_table(name, *columns, sa.PrimaryKeyConstraint(*primary_key))


def _replace_scores(primary_key: list[str], reasons: bool) -> None:
    """Rebuild prediction_scores with another key (portable: no named constraints)."""
    _scores_table("prediction_scores_new", primary_key, reasons)
    op.execute(
        f"INSERT INTO prediction_scores_new ({_SCORE_COLUMNS}) "
        f"SELECT {_SCORE_COLUMNS} FROM prediction_scores"
    )
    op.drop_table("prediction_scores")
    op.rename_table("prediction_scores_new", "prediction_scores")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", _ID, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("goal", _JSON, nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("population", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("trained_at_us", sa.BigInteger(), nullable=True),
        sa.Column("scored_at_us", sa.BigInteger(), nullable=True),
        sa.Column("attempted_at_us", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("progress_stage", sa.String(length=64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id"),
        sa.UniqueConstraint("workspace_id", "key", name="uq_predictions_workspace_key"),
    )
    op.create_table(
        "prediction_models",
        sa.Column("prediction_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("cutoff_us", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", "version"),
    )
    _replace_scores(["workspace_id", "key", "profile_id"], reasons=True)
    op.create_index(
        "ix_prediction_scores_percentile",
        "prediction_scores",
        ["workspace_id", "key", "percentile"],
    )


def downgrade() -> None:
    op.drop_index("ix_prediction_scores_percentile", table_name="prediction_scores")
    # The old key cannot hold one key's scores in two workspaces; such rows do not
    # survive a downgrade (the first workspace's are kept).
    _scores_table("prediction_scores_old", ["key", "profile_id"], reasons=False)
    op.execute(
        f"INSERT INTO prediction_scores_old ({_SCORE_COLUMNS}) "
        f"SELECT {_SCORE_COLUMNS} FROM prediction_scores s WHERE s.workspace_id = "
        "(SELECT min(o.workspace_id) FROM prediction_scores o "
        "WHERE o.key = s.key AND o.profile_id = s.profile_id)"
    )
    op.drop_table("prediction_scores")
    op.rename_table("prediction_scores_old", "prediction_scores")
    op.drop_table("prediction_models")
    op.drop_table("predictions")
