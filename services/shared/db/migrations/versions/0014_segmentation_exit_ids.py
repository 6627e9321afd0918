"""segmentation: the identifiers an erased person had, on their exit records

Erasure deletes the person's identities, so a sync reading an ``exited`` record later
could no longer name them to a destination. The exit records an erasure writes carry
the identifiers as JSON (``[[type, value], ...]``); every other record leaves the
column NULL and is named by the profile's current identifiers.

Revision ID: 0014_segmentation_exit_ids
Revises: 0006_segmentation_merged_stats
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_segmentation_exit_ids"
down_revision: str | Sequence[str] | None = "0006_segmentation_merged_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("membership_changes") as batch:
        batch.add_column(sa.Column("identifiers", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("membership_changes") as batch:
        batch.drop_column("identifiers")
