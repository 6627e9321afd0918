"""ingest: index identities by profile_id alone

`ix_identities_profile` was (workspace_id, profile_id). Until a growing table is first
analyzed, Postgres takes it for as cheap as the primary key for the per-key identity
probe (workspace_id, id_type, id_value), uses it with only workspace_id as the index
condition and filters every identifier of the workspace per key: an ingest batch's
lookup grew from 3 ms to 250 ms as a fresh workspace filled. Profile ids are unique
across workspaces, so (profile_id) serves every per-profile lookup (with workspace_id
as a filter on the one or few rows found), is smaller, and leaves the primary key the
only index a key probe can use.

Revision ID: 0005_ingest_identity_lookup
Revises: 0002_ingest
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_ingest_identity_lookup"
down_revision: str | Sequence[str] | None = "0002_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index("ix_identities_profile")
        batch_op.create_index("ix_identities_profile_id", ["profile_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index("ix_identities_profile_id")
        batch_op.create_index("ix_identities_profile", ["workspace_id", "profile_id"], unique=False)
