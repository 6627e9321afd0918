"""sync: destinations, syncs, runs and dead letters

The sync service's own tables (services/sync/tables.py). They reference no other
service's table, so the revision hangs off the core one and forms its own head.

Revision ID: 0017_sync
Revises: 0001_core
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017_sync"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sync_destinations",
        sa.Column("destination_id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("directory", sa.String(1024), nullable=False),
        sa.Column("file_format", sa.String(8), nullable=False),
        sa.Column("secret_ciphertext", sa.Text, nullable=True),
        sa.Column("rate_limit_per_second", sa.Float, nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Float, nullable=False),
        sa.Column("options", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_sync_destinations_workspace", "sync_destinations", ["workspace_id", "destination_id"]
    )
    op.create_table(
        "syncs",
        sa.Column("sync_id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("destination_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_key", sa.String(255), nullable=False),
        sa.Column("id_type", sa.String(64), nullable=False),
        sa.Column("cadence", sa.String(16), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("backfilled", sa.Boolean, nullable=False),
        sa.Column("delivered_members", sa.BigInteger, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("paused_reason", sa.Text, nullable=False),
        sa.Column("max_removal_fraction", sa.Float, nullable=False),
        sa.Column("removal_approved", sa.Boolean, nullable=False),
        sa.Column("destination_state", _JSON, nullable=True),
        sa.Column("next_run_at_us", sa.BigInteger, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until_us", sa.BigInteger, nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_syncs_workspace", "syncs", ["workspace_id", "sync_id"])
    op.create_index("ix_syncs_due", "syncs", ["next_run_at_us"])
    op.create_table(
        "sync_runs",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("sync_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("added", sa.BigInteger, nullable=False),
        sa.Column("removed", sa.BigInteger, nullable=False),
        sa.Column("skipped", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("batches", sa.BigInteger, nullable=False),
        sa.Column("retries", sa.BigInteger, nullable=False),
        sa.Column("from_cursor", sa.BigInteger, nullable=False),
        sa.Column("to_cursor", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_sync_runs_sync", "sync_runs", ["sync_id", "run_id"])
    op.create_table(
        "sync_dead_letters",
        sa.Column("dead_letter_id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("sync_id", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("changes", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_body", sa.Text, nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("redriven_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_sync_dead_letters_run", "sync_dead_letters", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_sync_dead_letters_run", table_name="sync_dead_letters")
    op.drop_table("sync_dead_letters")
    op.drop_index("ix_sync_runs_sync", table_name="sync_runs")
    op.drop_table("sync_runs")
    op.drop_index("ix_syncs_due", table_name="syncs")
    op.drop_index("ix_syncs_workspace", table_name="syncs")
    op.drop_table("syncs")
    op.drop_index("ix_sync_destinations_workspace", table_name="sync_destinations")
    op.drop_table("sync_destinations")
