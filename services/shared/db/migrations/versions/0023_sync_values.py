"""sync: syncs of computed traits and prediction scores (a keyset cursor over the
values' computed-at instant and profile id), the "active in the last N days" filter,
and the event filter of event syncs

Revision ID: 0023_sync_values
Revises: 0017_sync
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")

revision: str = "0023_sync_values"
down_revision: str | Sequence[str] | None = "0017_sync"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("syncs") as batch:
        batch.add_column(
            sa.Column("cursor_profile_id", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("active_within_days", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("event_filter", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("syncs") as batch:
        batch.drop_column("event_filter")
        batch.drop_column("active_within_days")
        batch.drop_column("cursor_profile_id")
