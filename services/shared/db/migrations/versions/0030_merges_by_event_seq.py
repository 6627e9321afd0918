"""ingest: index merges by the event that made them, not by workspace

The only read of `merges` is ingest's catch-up: the merges whose `event_seq` lies in
the range of events it republishes, ordered by `merge_id`. Nothing reads merges by
workspace alone, so `ix_merges_workspace_id` cost every merge a write for no reader
(bench/ingest_index_cost.py, docs/ingest.md "What each index costs"), while the
catch-up's range read scanned the whole table, which grows with every merge.

Revision ID: 0030_merges_by_event_seq
Revises: 0005_ingest_identity_lookup
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0030_merges_by_event_seq"
down_revision: str | Sequence[str] | None = "0005_ingest_identity_lookup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.drop_index("ix_merges_workspace_id")
        batch_op.create_index("ix_merges_event_seq", ["event_seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.drop_index("ix_merges_event_seq")
        batch_op.create_index("ix_merges_workspace_id", ["workspace_id"], unique=False)
