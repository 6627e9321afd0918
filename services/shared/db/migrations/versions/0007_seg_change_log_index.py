"""segmentation: the change log's audience index keyed by (audience_id, seq)

Its reader is WatchChanges for given audiences (``SegmentationStore.changes_after``:
``seq > last`` of those audiences, in seq order), which on the primary key alone would
walk every other audience's changes on each poll. Audience ids are global, so the
workspace string only widened each key of an index that every change record
maintains; without it the entries are 8 bytes narrower and each audience's new records
still append at the right edge of its range. (GetMembershipHistory reads it too, by
audience, filtering the profile.)

Revision ID: 0007_seg_change_log_index
Revises: 0006_segmentation_merged_stats
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_seg_change_log_index"
down_revision: str | Sequence[str] | None = "0006_segmentation_merged_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_membership_changes_audience", table_name="membership_changes")
    op.create_index(
        "ix_membership_changes_audience_seq", "membership_changes", ["audience_id", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_membership_changes_audience_seq", table_name="membership_changes")
    op.create_index(
        "ix_membership_changes_audience",
        "membership_changes",
        ["workspace_id", "audience_id", "seq"],
    )
