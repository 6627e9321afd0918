"""Tables owned by the prediction service, on the shared ``metadata``.

- ``predictions``: one row per prediction: its goal (event name + where filters, JSON),
  horizon, optional population audience, training state, the current model version, and
  the lease and progress of the job running on it (scheduler.py).
- ``prediction_models``: every trained model of a prediction (LightGBM model text, the
  isotonic calibration, the feature spec and the held-out metrics), versioned 1, 2, ...

The scores themselves live in ``prediction_scores``, a read model shared through
services/shared/db/tables.py because segmentation reads it too.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, UniqueConstraint

from services.shared.db.tables import Id, Json, metadata

__all__ = ["prediction_models", "predictions"]

predictions = Table(
    "predictions",
    metadata,
    Column("prediction_id", Id, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("name", String(255), nullable=False, default=""),
    Column("goal", Json, nullable=False),
    Column("horizon_days", Integer, nullable=False),
    Column("population", String(255), nullable=True),  # an audience key
    Column("state", String(16), nullable=False),  # untrained, training, ready, failed
    Column("failure_reason", Text, nullable=True),
    Column("model_version", Integer, nullable=False, default=0),
    Column("trained_at_us", BigInteger, nullable=True),
    Column("scored_at_us", BigInteger, nullable=True),
    # When the scheduler last tried to train it (so a failing one waits for its next turn).
    Column("attempted_at_us", BigInteger, nullable=True),
    # The job lease: one replica at a time trains or scores a prediction.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    # Progress of the running (or last) job, readable from any replica.
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False, default=0),
    Column("progress_stage", String(64), nullable=False, default=""),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    UniqueConstraint("workspace_id", "key", name="uq_predictions_workspace_key"),
)

prediction_models = Table(
    "prediction_models",
    metadata,
    Column("prediction_id", BigInteger, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("cutoff_us", BigInteger, nullable=False),
    Column("model", Text, nullable=False),  # LightGBM model_to_string()
    # {"features": {...}, "calibration": {"x": [...], "y": [...]}}
    Column("spec", Json, nullable=False),
    Column("metrics", Json, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)
