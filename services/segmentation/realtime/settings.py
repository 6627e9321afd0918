"""The realtime worker's settings (environment variables, read once per process)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from redis.crc import key_slot

from services.shared.redis import cluster_mode
from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM, event_streams

# grpc.health.v1 of the worker (GRPC_PORT overrides); 50056 is the embedded store.
DEFAULT_PORT = 50057


@dataclass(frozen=True)
class RealtimeSettings:
    """How the worker consumes and schedules. Construct with `from_env()`."""

    # The event stream shards this worker consumes (REALTIME_STREAMS, comma-separated;
    # unset: every shard ingest writes, per INGEST_SHARDS).
    streams: tuple[str, ...] = (EVENTS_STREAM,)
    group: str = "segmentation-realtime"
    # Unique per process: pending entries are owned by a consumer name.
    consumer: str = "realtime"
    # Entries per XREADGROUP (per shard) and the longest wait for new ones.
    batch_size: int = 500
    # Under a backlog a batch grows by further reads that do not wait, up to this many
    # entries (REALTIME_MAX_BATCH; see worker.read_backlog). batch_size: no growth.
    max_batch: int = 5_000
    block_ms: int | None = 200  # None: never wait (a caller stepping the worker itself)
    # An entry read but not acknowledged for this long is taken over (XAUTOCLAIM), at
    # start and every claim_every_seconds.
    claim_idle_ms: int = 30_000
    claim_every_seconds: float = 5.0
    # The due-time sorted set of (workspace, profile) next window boundaries.
    due_key: str = "realtime:due"
    # Prefix of the handover keys: <prefix>:pending:<ws> (profiles evaluated while a
    # realtime definition backfilled) and <prefix>:served:<ws> (definition -> version
    # handed over).
    handover_key: str = "realtime:handover"
    # The stream changes are appended to, and its approximate length cap.
    changes_stream: str = CHANGES_STREAM
    changes_maxlen: int = 1_000_000
    # The hash of the last change seq published to the changes stream per workspace.
    # One script writes it and the stream: on a Redis Cluster (REDIS_CLUSTER) its
    # default (REALTIME_CHANGES_CURSOR_KEY empty or unset) is
    # `cluster_changes_cursor_key(changes_stream)`, on the stream's slot.
    changes_cursor_key: str = "realtime:changes:published"

    @classmethod
    def from_env(cls) -> RealtimeSettings:
        """Every setting from REALTIME_* variables, with the defaults above."""
        env = os.environ
        default = cls()
        streams = tuple(s for s in env.get("REALTIME_STREAMS", "").split(",") if s)
        changes_stream = env.get("REALTIME_CHANGES_STREAM", default.changes_stream)
        cursor_key = env.get("REALTIME_CHANGES_CURSOR_KEY") or (
            cluster_changes_cursor_key(changes_stream)
            if cluster_mode()
            else default.changes_cursor_key
        )
        if cluster_mode() and key_slot(cursor_key.encode()) != key_slot(changes_stream.encode()):
            raise ValueError(
                f"REALTIME_CHANGES_CURSOR_KEY {cursor_key!r} must share a Redis Cluster slot"
                f" with the changes stream {changes_stream!r} (one script writes both):"
                f" leave it empty for {cluster_changes_cursor_key(changes_stream)!r}"
            )
        return cls(
            streams=streams or event_streams(),
            group=env.get("REALTIME_GROUP", default.group),
            consumer=env.get("REALTIME_CONSUMER") or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=int(env.get("REALTIME_BATCH_SIZE", default.batch_size)),
            max_batch=int(env.get("REALTIME_MAX_BATCH", default.max_batch)),
            block_ms=(
                int(env["REALTIME_BLOCK_MS"]) if "REALTIME_BLOCK_MS" in env else default.block_ms
            ),
            claim_idle_ms=int(env.get("REALTIME_CLAIM_IDLE_MS", default.claim_idle_ms)),
            claim_every_seconds=float(
                env.get("REALTIME_CLAIM_EVERY_SECONDS", default.claim_every_seconds)
            ),
            due_key=env.get("REALTIME_DUE_KEY", default.due_key),
            handover_key=env.get("REALTIME_HANDOVER_KEY", default.handover_key),
            changes_stream=changes_stream,
            changes_maxlen=int(env.get("REALTIME_CHANGES_MAXLEN", default.changes_maxlen)),
            changes_cursor_key=cursor_key,
        )


def cluster_changes_cursor_key(changes_stream: str) -> str:
    """The changes cursor's key on a Redis Cluster: hash tag = the stream's name, so the
    publish script's two keys share a slot."""
    return "{" + changes_stream + "}:published"
