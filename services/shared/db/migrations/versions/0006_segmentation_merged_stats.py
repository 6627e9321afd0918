"""segmentation: planner statistics on "merged away" profiles (Postgres)

Batch evaluation joins the workspace's merged-away profiles (``canonical_id <>
profile_id``) at several places; Postgres has no statistics for a comparison of two
columns and assumes 99.5% of the profiles match it (usually almost none do). With that
estimate it hashed the whole trait table, or a million-row join result, against what it
took for a million merged profiles: seconds of a 10M-event rollup. Expression
statistics on the exact expression that ``sql.merged_away`` emits give it the real
share (most common values of the boolean). SQLite has nothing to create.

Revision ID: 0006_segmentation_merged_stats
Revises: 0004_segmentation_accounts
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_segmentation_merged_stats"
down_revision: str | Sequence[str] | None = "0004_segmentation_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE STATISTICS st_profiles_merged"
        " ON ((CASE WHEN (canonical_id <> profile_id) THEN true ELSE false END))"
        " FROM profiles"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP STATISTICS st_profiles_merged")
