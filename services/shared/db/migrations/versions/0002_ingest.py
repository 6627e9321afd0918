"""ingest: time-partitioned events (Postgres), event_ids, ingest_cursor

On Postgres `events` becomes a table partitioned by RANGE (timestamp_us), one partition
per year 2000-2039 plus a default, so time-window scans prune and old years can be
detached. A partitioned table's unique keys must include the partition column, so
(workspace_id, message_id) uniqueness moves to `event_ids`. SQLite keeps the plain
events table (and its unique constraint) and only gains the two ingest tables.

Revision ID: 0002_ingest
Revises: 0001_core
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ingest"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIRST_YEAR, END_YEAR = 2000, 2040
_COLUMNS = (
    "seq, workspace_id, message_id, type, name, profile_id, user_id, anonymous_id, "
    "group_id, previous_id, timestamp_us, received_at_us, properties, traits, context"
)


def _year_us(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000


def upgrade() -> None:
    op.create_table(
        "event_ids",
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "message_id"),
    )
    op.create_table(
        "ingest_cursor",
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("published_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream"),
    )
    op.execute(
        "INSERT INTO event_ids (workspace_id, message_id, seq, profile_id) "
        "SELECT workspace_id, message_id, seq, profile_id FROM events"
    )
    # Existing events count as published: the stream starts after them.
    op.execute(
        "INSERT INTO ingest_cursor (stream, last_seq, published_seq) "
        "SELECT 'events', COALESCE(MAX(seq), 0), COALESCE(MAX(seq), 0) FROM events"
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE events RENAME TO events_unpartitioned")
    op.execute("ALTER INDEX ix_events_profile_time RENAME TO ix_events_profile_time_old")
    op.execute("ALTER INDEX ix_events_name_time RENAME TO ix_events_name_time_old")
    op.execute("ALTER SEQUENCE events_seq_seq OWNED BY NONE")
    op.execute(
        """
        CREATE TABLE events (
            seq BIGINT NOT NULL DEFAULT nextval('events_seq_seq'),
            workspace_id VARCHAR(64) NOT NULL,
            message_id VARCHAR(255) NOT NULL,
            type VARCHAR(16) NOT NULL,
            name VARCHAR(255),
            profile_id BIGINT NOT NULL,
            user_id VARCHAR(255),
            anonymous_id VARCHAR(255),
            group_id VARCHAR(255),
            previous_id VARCHAR(255),
            timestamp_us BIGINT NOT NULL,
            received_at_us BIGINT NOT NULL,
            properties JSONB,
            traits JSONB,
            context JSONB,
            PRIMARY KEY (seq, timestamp_us)
        ) PARTITION BY RANGE (timestamp_us)
        """
    )
    for year in range(FIRST_YEAR, END_YEAR):
        op.execute(
            f"CREATE TABLE events_y{year} PARTITION OF events "
            f"FOR VALUES FROM ({_year_us(year)}) TO ({_year_us(year + 1)})"
        )
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute("ALTER SEQUENCE events_seq_seq OWNED BY events.seq")
    op.execute(
        "CREATE INDEX ix_events_profile_time ON events (workspace_id, profile_id, timestamp_us)"
    )
    op.execute(
        "CREATE INDEX ix_events_name_time ON events (workspace_id, type, name, timestamp_us)"
    )
    op.execute(f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_unpartitioned")
    op.execute("DROP TABLE events_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events RENAME TO events_partitioned")
        op.execute("ALTER SEQUENCE events_seq_seq OWNED BY NONE")
        op.execute("ALTER INDEX ix_events_profile_time RENAME TO ix_events_profile_time_p")
        op.execute("ALTER INDEX ix_events_name_time RENAME TO ix_events_name_time_p")
        op.execute(
            """
            CREATE TABLE events (
                seq BIGINT NOT NULL DEFAULT nextval('events_seq_seq') PRIMARY KEY,
                workspace_id VARCHAR(64) NOT NULL,
                message_id VARCHAR(255) NOT NULL,
                type VARCHAR(16) NOT NULL,
                name VARCHAR(255),
                profile_id BIGINT NOT NULL,
                user_id VARCHAR(255),
                anonymous_id VARCHAR(255),
                group_id VARCHAR(255),
                previous_id VARCHAR(255),
                timestamp_us BIGINT NOT NULL,
                received_at_us BIGINT NOT NULL,
                properties JSONB,
                traits JSONB,
                context JSONB,
                CONSTRAINT uq_events_workspace_message UNIQUE (workspace_id, message_id)
            )
            """
        )
        op.execute("ALTER SEQUENCE events_seq_seq OWNED BY events.seq")
        op.execute(
            "CREATE INDEX ix_events_profile_time ON events (workspace_id, profile_id, timestamp_us)"
        )
        op.execute(
            "CREATE INDEX ix_events_name_time ON events (workspace_id, type, name, timestamp_us)"
        )
        op.execute(
            f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_partitioned "
            "ON CONFLICT (workspace_id, message_id) DO NOTHING"
        )
        op.execute("DROP TABLE events_partitioned")
    op.drop_table("ingest_cursor")
    op.drop_table("event_ids")
