"""Table definitions shared by every service (SQLAlchemy Core).

These tables are the durable source of truth. Time is stored as integer microseconds
since the Unix epoch (UTC) so that window arithmetic is plain integer comparison on
both Postgres and SQLite. JSON columns are JSONB on Postgres and JSON text on SQLite.
Each service that owns further tables defines them in its own ``tables.py`` on the
same ``metadata`` and adds an Alembic migration for them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    false,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# JSONB on Postgres (indexable, compact), JSON text elsewhere.
Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

workspaces = Table(
    "workspaces",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    # Identity guardrails (design.md section 5): blocked values, per-type limits, priority.
    Column("identity_rules", Json, nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("workspace_id", String(64), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    # sha256 of the secret; the secret itself is shown once and never stored.
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("scopes", String(255), nullable=False),  # space-separated, e.g. "ingest:write admin"
    Column("created_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
)

profiles = Table(
    "profiles",
    metadata,
    Column("profile_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    # Equal to profile_id while the profile is alive; the survivor's id once merged.
    Column("canonical_id", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=True),
    Column("merged_at_us", BigInteger, nullable=True),
    Column("deleted_at_us", BigInteger, nullable=True),
    Index("ix_profiles_workspace_canonical", "workspace_id", "canonical_id"),
)

# The merged-away profiles of a workspace (few: a write of segmentation re-keys their
# memberships to the survivor), found without reading every profile. The predicate is
# the exact expression segmentation's queries filter by (sql.merged_away), which is what
# lets the planner use the index (and what migration 0006's statistics describe).
Index(
    "ix_profiles_merged_away",
    profiles.c.workspace_id,
    postgresql_where=case(
        (profiles.c.canonical_id != profiles.c.profile_id, true()), else_=false()
    ),
    sqlite_where=case((profiles.c.canonical_id != profiles.c.profile_id, true()), else_=false()),
)

identities = Table(
    "identities",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("id_type", String(64), primary_key=True),  # user_id, anonymous_id, email, device_id, ...
    Column("id_value", String(255), primary_key=True),
    Column("profile_id", BigInteger, nullable=False),
    Column("first_seen_us", BigInteger, nullable=False),
    # profile_id alone: see migration 0005_ingest_identity_lookup.
    Index("ix_identities_profile_id", "profile_id"),
)

profile_traits = Table(
    "profile_traits",
    metadata,
    Column("profile_id", BigInteger, primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    # NULL value is a tombstone: the trait was set to null, so older values stay removed.
    Column("value", Json, nullable=True),
    # The (timestamp_us, seq) of the identify that set it: latest timestamp wins,
    # received order (seq) breaks ties, so late events converge.
    Column("timestamp_us", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_profile_traits_ws_key", "workspace_id", "key"),
)

events = Table(
    "events",
    metadata,
    # Global, monotonically assigned at insert; the stream entry id derives from it.
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("type", String(16), nullable=False),  # track identify page screen group alias
    Column("name", String(255), nullable=True),  # track event name, or page/screen name
    Column("profile_id", BigInteger, nullable=False),  # resolve via profiles.canonical_id
    Column("user_id", String(255), nullable=True),
    Column("anonymous_id", String(255), nullable=True),
    Column("group_id", String(255), nullable=True),
    Column("previous_id", String(255), nullable=True),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Column("properties", Json, nullable=True),
    Column("traits", Json, nullable=True),
    Column("context", Json, nullable=True),
    # SQLite only: on Postgres `events` is partitioned by time (0002_ingest), whose unique
    # keys must include the partition column, so event_ids holds this uniqueness there.
    UniqueConstraint("workspace_id", "message_id", name="uq_events_workspace_message").ddl_if(
        dialect="sqlite"
    ),
    Index("ix_events_profile_time", "workspace_id", "profile_id", "timestamp_us"),
    Index("ix_events_name_time", "workspace_id", "type", "name", "timestamp_us"),
)

merges = Table(
    "merges",
    metadata,
    Column("merge_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("survivor_id", BigInteger, nullable=False),
    Column("merged_id", BigInteger, nullable=False),
    # The event whose identifiers linked them; ingest's catch-up reads merges by it.
    Column("event_seq", BigInteger, nullable=True, index=True),
    Column("reason", Text, nullable=False),
    Column("merged_at_us", BigInteger, nullable=False),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("id_type", String(64), primary_key=True),
    Column("id_value", String(255), primary_key=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
)

# A read model shared between services (docs/decisions.md, "Prediction scores as a shared
# read model"): the prediction service writes each profile's latest score of each
# prediction; segmentation's `prediction` conditions read it. The workspace leads the key
# (prediction keys are per workspace); the second index serves ListScores by percentile.
prediction_scores = Table(
    "prediction_scores",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("profile_id", BigInteger, primary_key=True),
    Column("probability", Float, nullable=False),
    Column("percentile", Float, nullable=False),
    Column("scored_at_us", BigInteger, nullable=False),
    # [{"feature", "value", "contribution"}, ...]: the top reasons, strongest first.
    Column("reasons", Json, nullable=True),
    Index("ix_prediction_scores_percentile", "workspace_id", "key", "percentile"),
)

# Exposures logged by GetProfile (``log_exposure``): the profile service writes them
# (batched, off the request path), segmentation's GetAudiencePerformance reads them
# beside the "Audience Exposure" track events apps send. A shared read model like
# prediction_scores: two services, one table, no import between them.
audience_exposures = Table(
    "audience_exposures",
    metadata,
    Column("exposure_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("audience_key", String(255), nullable=False),
    Column("profile_id", BigInteger, nullable=False),
    Column("exposed_at_us", BigInteger, nullable=False),
    Index("ix_audience_exposures_key_time", "workspace_id", "audience_key", "exposed_at_us"),
)

# A read model shared between services, like prediction_scores: each recommendation
# training (the profile service) replaces its object's rows in one transaction, one row
# per profile with a list; a hot-state rebuild restores the profiles' own lists from it
# and recommendation syncs (the sync service) read it. `items` is the profile's list as
# the hot state holds it (services.shared.hotstate, recs_by_model): a JSON array of
# {item_id, score, model, metadata (JSON object text)}, best first, kept as text so a
# rebuild writes it back byte for byte. Erasing a profile or deleting the object deletes
# its rows (docs/recommendations.md, "Where the lists live").
recommendation_lists = Table(
    "recommendation_lists",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("model_key", String(64), primary_key=True),
    Column("profile_id", BigInteger, primary_key=True),
    Column("items", Text, nullable=False),
    Column("trained_at_us", BigInteger, nullable=False),
)
