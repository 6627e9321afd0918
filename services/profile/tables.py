"""Tables owned by the profile service: recommendation objects and their training status."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Integer, String, Table, Text

from services.shared.db.tables import Json, metadata

recommendation_models = Table(
    "recommendation_models",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    # [{"event_name": ..., "weight": ...}, ...]
    Column("item_events", Json, nullable=False),
    Column("item_property", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("recommend_consumed", Boolean, nullable=False),
    # [{"property": ..., "values": [...]}, ...]
    Column("exclusions", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    # never_trained | running | succeeded | failed
    Column("training_state", String(16), nullable=False),
    Column("training_progress", Float, nullable=False),
    Column("training_started_at_us", BigInteger, nullable=True),
    Column("training_finished_at_us", BigInteger, nullable=True),
    Column("trained_profiles", BigInteger, nullable=False),
    Column("trained_items", BigInteger, nullable=False),
    Column("trained_interactions", BigInteger, nullable=False),
    Column("training_error", Text, nullable=True),
    # The last training's popular items (the hot state's recs_popular entry, kept for
    # a rebuild), `size` of them, then up to as many that follow (recs_popular_more):
    # [{"item_id", "score", "model", "metadata"}, ...]; null before one.
    Column("popular_items", Json, nullable=True),
    # The event whose next items the ranker learns to predict; null: any item event.
    Column("goal_event", String(255), nullable=True),
    # When TrainRecommendationModel asked for a training that the training job runs
    # (RECOMMENDATIONS_TRAINING=job); cleared when a training starts.
    Column("training_requested_at_us", BigInteger, nullable=True),
)
