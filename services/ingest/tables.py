"""Tables owned by the ingest service (on the shared metadata; migration 0002_ingest).

`event_ids` keeps (workspace, message_id) unique once `events` is time-partitioned on
Postgres (a partitioned table's unique keys must include the partition column), and
answers duplicate checks without touching the events table. `ingest_cursor` holds the
last committed event seq (drawn under the write lock, so seq order is commit order) and
the last seq known to be on the Redis stream (a durable copy of the stream cursor).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, String, Table

from services.shared.db.tables import metadata

event_ids = Table(
    "event_ids",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("message_id", String(255), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("profile_id", BigInteger, nullable=False),
)

ingest_cursor = Table(
    "ingest_cursor",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("published_seq", BigInteger, nullable=False),
)

STREAM_CURSOR = "events"
