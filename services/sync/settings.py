"""The sync service's own settings, from the environment (SYNC_*)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM, event_streams


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class SyncSettings:
    """Knobs of delivery, the guardrail's default and the scheduler."""

    # Fernet key(s) that encrypt destination secrets (services/sync/secrets.py).
    secret_key: str | None = None
    # Backoff of retried deliveries: base * 2**attempt with full jitter, capped.
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    # Attempts of one batch before the run fails (its cursor stays before the batch).
    max_attempts: int = 8
    # How long a replica's claim on a sync lasts without renewal (renewed per batch).
    claim_seconds: float = 300.0
    # How often the scheduler looks for due hourly and daily syncs.
    scheduler_interval_seconds: float = 30.0
    # Value syncs read only values computed at least this long ago (a computation
    # commits after the instant it stamps on its values).
    value_settle_seconds: float = 60.0
    # Event syncs: the event stream shards they read (SYNC_EVENTS_STREAMS,
    # comma-separated; unset: every shard ingest writes, per INGEST_SHARDS), how often
    # each replica looks for new entries, and the longest one run of an event sync
    # keeps reading.
    events_streams: tuple[str, ...] = (EVENTS_STREAM,)
    events_poll_seconds: float = 0.1
    events_run_seconds: float = 1.0
    # Realtime syncs: the changes stream and this service's consumer group on it.
    changes_stream: str = CHANGES_STREAM
    realtime_group: str = "sync-realtime"
    # Longest wait for new change entries (ms); entries per read.
    realtime_block_ms: int = 200
    realtime_batch: int = 1000
    # An entry read by a replica but not acknowledged for this long is taken over
    # (XAUTOCLAIM), at start and every realtime_claim_every_seconds.
    realtime_claim_idle_ms: int = 30_000
    realtime_claim_every_seconds: float = 5.0
    # How often every realtime sync is checked against the change log (first backfill,
    # resumed syncs, and any change whose stream entry was lost).
    realtime_sweep_seconds: float = 2.0
    # Who holds a claim: unique per process.
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def from_env(cls) -> SyncSettings:
        """Read the SYNC_* variables, falling back to the defaults above."""
        env = os.environ
        return cls(
            secret_key=env.get("SYNC_SECRET_KEY") or None,
            retry_base_seconds=_float("SYNC_RETRY_BASE_SECONDS", 0.5),
            retry_max_seconds=_float("SYNC_RETRY_MAX_SECONDS", 60.0),
            max_attempts=int(env.get("SYNC_MAX_ATTEMPTS") or 8),
            claim_seconds=_float("SYNC_CLAIM_SECONDS", 300.0),
            scheduler_interval_seconds=_float("SYNC_SCHEDULER_INTERVAL_SECONDS", 30.0),
            value_settle_seconds=_float("SYNC_VALUE_SETTLE_SECONDS", 60.0),
            events_streams=(
                tuple(s for s in env.get("SYNC_EVENTS_STREAMS", "").split(",") if s)
                or event_streams()
            ),
            events_poll_seconds=_float("SYNC_EVENTS_POLL_SECONDS", 0.1),
            events_run_seconds=_float("SYNC_EVENTS_RUN_SECONDS", 1.0),
            changes_stream=env.get("SYNC_CHANGES_STREAM") or CHANGES_STREAM,
            realtime_group=env.get("SYNC_REALTIME_GROUP") or "sync-realtime",
            realtime_block_ms=int(env.get("SYNC_REALTIME_BLOCK_MS") or 200),
            realtime_batch=int(env.get("SYNC_REALTIME_BATCH") or 1000),
            realtime_claim_idle_ms=int(env.get("SYNC_REALTIME_CLAIM_IDLE_MS") or 30_000),
            realtime_claim_every_seconds=_float("SYNC_REALTIME_CLAIM_EVERY_SECONDS", 5.0),
            realtime_sweep_seconds=_float("SYNC_REALTIME_SWEEP_SECONDS", 2.0),
        )
