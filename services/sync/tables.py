"""Tables owned by the sync service, on the shared ``metadata``.

- ``sync_destinations``: where syncs deliver; the secret only as ciphertext
  (services/sync/secrets.py), never in plain text.
- ``syncs``: one audience to one destination. ``cursor`` is the last membership-change
  seq the destination acknowledged; ``claimed_by``/``claimed_until_us`` is the row claim
  that lets exactly one replica run a sync at a time.
- ``sync_runs``: one row per run, with its counts.
- ``sync_sent_lists``: per recommendation sync and profile, the digest of the list the
  destination last acknowledged (or that was dead-lettered): a run sends the lists whose
  digest differs. Per audience sync with ``active_within_days``, a row (digest
  ``member``) for each person the destination holds from the sync: their exit is sent,
  others' are not.
- ``sync_dead_letters``: batches a destination refused (4xx other than 429), with the
  response and the payload, so they can be inspected and re-driven.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text
from sqlalchemy import false as sa_false

from services.shared.db.tables import Json, metadata

__all__ = ["sync_dead_letters", "sync_destinations", "sync_runs", "sync_sent_lists", "syncs"]

sync_destinations = Table(
    "sync_destinations",
    metadata,
    Column("destination_id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),  # webhook | file | braze | amplitude
    Column("base_url", String(2048), nullable=False, default=""),
    Column("directory", String(1024), nullable=False, default=""),
    Column("file_format", String(8), nullable=False, default=""),
    Column("secret_ciphertext", Text, nullable=True),
    Column("rate_limit_per_second", Float, nullable=False, default=0.0),
    Column("batch_size", Integer, nullable=False),
    Column("timeout_seconds", Float, nullable=False),
    # Type-specific settings (string -> string), checked by the type's module.
    Column("options", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_sync_destinations_workspace", "workspace_id", "destination_id"),
)

syncs = Table(
    "syncs",
    metadata,
    Column("sync_id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("destination_id", String(40), nullable=False),
    Column("source", String(16), nullable=False),  # audience | computed_trait | prediction
    Column("source_key", String(255), nullable=False),
    Column("id_type", String(64), nullable=False),
    Column("cadence", String(16), nullable=False),  # one_time | hourly | daily | realtime
    # Audiences: the last membership-change seq acknowledged. Computed traits and
    # predictions: the (computed-at us, profile id) of the last value acknowledged.
    Column("cursor", BigInteger, nullable=False, default=0),
    Column("cursor_profile_id", BigInteger, nullable=False, default=0, server_default="0"),
    # Only profiles with an event in the last N days are sent (0: every profile).
    Column("active_within_days", Integer, nullable=False, default=0, server_default="0"),
    # Event syncs: {"types": [...], "names": [...]} forwarded (empty lists: every one).
    Column("event_filter", Json, nullable=True),
    # Audience syncs: leave out the members in the audience's holdout (control) group.
    Column("exclude_holdout", Boolean, nullable=False, default=False, server_default=sa_false()),
    # Recommendation syncs: each item as {item_id, metadata} rather than its id.
    Column("item_metadata", Boolean, nullable=False, default=False, server_default=sa_false()),
    # False until the first run delivered the audience's members as of its cursor.
    Column("backfilled", Boolean, nullable=False, default=False),
    # How many profiles the destination holds from this sync (added - removed, acknowledged):
    # the base of the size guardrail.
    Column("delivered_members", BigInteger, nullable=False, default=0),
    Column("paused", Boolean, nullable=False, default=False),
    Column("paused_reason", Text, nullable=False, default=""),
    Column("max_removal_fraction", Float, nullable=False),
    # Set when an operator resumes a sync the guardrail paused: its next run may remove.
    Column("removal_approved", Boolean, nullable=False, default=False),
    # What a destination type keeps between runs (e.g. the Amplitude cohort id).
    Column("destination_state", Json, nullable=True),
    Column("next_run_at_us", BigInteger, nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until_us", BigInteger, nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_syncs_workspace", "workspace_id", "sync_id"),
    Index("ix_syncs_due", "next_run_at_us"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("sync_id", String(40), nullable=False),
    Column("status", String(16), nullable=False),
    Column("added", BigInteger, nullable=False, default=0),
    Column("removed", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("failed", BigInteger, nullable=False, default=0),
    Column("batches", BigInteger, nullable=False, default=0),
    Column("retries", BigInteger, nullable=False, default=0),
    Column("from_cursor", BigInteger, nullable=False),
    Column("to_cursor", BigInteger, nullable=False),
    Column("error", Text, nullable=False, default=""),
    Column("started_at_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger, nullable=True),
    Index("ix_sync_runs_sync", "sync_id", "run_id"),
)

sync_dead_letters = Table(
    "sync_dead_letters",
    metadata,
    Column("dead_letter_id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("sync_id", String(40), nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("changes", Integer, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("payload", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    # When a re-drive delivered it (NULL: still to deliver).
    Column("redriven_at_us", BigInteger, nullable=True),
    Index("ix_sync_dead_letters_run", "run_id"),
)

sync_sent_lists = Table(
    "sync_sent_lists",
    metadata,
    Column("sync_id", String(40), primary_key=True),
    Column("profile_id", BigInteger, primary_key=True),
    Column("digest", String(32), nullable=False),
    Column("sent_at_us", BigInteger, nullable=False),
)
