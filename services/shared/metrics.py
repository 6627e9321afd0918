"""Metrics of every process, served to Prometheus.

OTEL_METRICS_EXPORTER=prometheus (default none: nothing is served) serves `/metrics` on
OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT (default 127.0.0.1:9464),
the OpenTelemetry variables' names and meaning. What it exposes:

- `rpc_server_duration_seconds` (histogram): every API call's latency, by
  `rpc_method` and `rpc_grpc_status_code` (services/shared/server.py; only timed while
  metrics are served).
- `audiences_stream_lag` (gauge): per `stream` and consumer `group`, the entries the
  group is behind by (not yet delivered to it plus delivered but not acknowledged),
  read with XINFO GROUPS every few seconds. Every process reports it, so dashboards and
  the HPA of stream workers take the max per (stream, group) (docs/operations.md).
- `audiences_realtime_evaluation_duration_seconds` (histogram): one realtime batch
  evaluation of a workspace, from reading definitions to publishing its changes.
- `audiences_sync_failures_total` (counter): by `reason`: `refused` (a batch the
  destination refused after its retries: dead-lettered) or `run_failed` (a run that
  stopped: retries exhausted, claim lost).

prometheus_client rather than the OpenTelemetry metrics SDK: recording one histogram
value cost ~27 us in the SDK against ~0.7 us here (measured), and the API latency
histogram is recorded on every call.
"""

from __future__ import annotations

import asyncio
import logging
import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.asyncio import Redis

from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)

# From half a millisecond (a GetProfile) to ten seconds (a big Recompute).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RPC_DURATION = Histogram(
    "rpc_server_duration_seconds",
    "API call latency, by method and status",
    ["rpc_method", "rpc_grpc_status_code"],
    buckets=_LATENCY_BUCKETS,
)
REALTIME_EVALUATION = Histogram(
    "audiences_realtime_evaluation_duration_seconds",
    "One realtime evaluation of a workspace's touched profiles",
    buckets=_LATENCY_BUCKETS,
)
SYNC_FAILURES = Counter(
    "audiences_sync_failures",
    "Sync batches refused (dead-lettered) and sync runs failed, by reason",
    ["reason"],
)
STREAM_LAG = Gauge(
    "audiences_stream_lag",
    "Entries a consumer group is behind by (undelivered + unacknowledged)",
    ["stream", "group"],
)

_enabled = False
_watching = False
LAG_EVERY_SECONDS = 5.0


def setup_metrics() -> bool:
    """Serve this process's metrics when OTEL_METRICS_EXPORTER=prometheus (first call
    wins); returns whether metrics are on."""
    global _enabled
    if _enabled:
        return True
    if os.environ.get("OTEL_METRICS_EXPORTER", "none") != "prometheus":
        return False
    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    start_http_server(port, host)
    log.info("metrics on http://%s:%d/metrics", host, port)
    _enabled = True
    return True


def enabled() -> bool:
    """True once this process serves metrics."""
    return _enabled


def lag_streams() -> list[str]:
    """The streams whose consumer groups are watched: the event stream (or its shards,
    `stream:events:<n>` for n < INGEST_SHARDS, the scale-out's shard count) and the
    changes stream."""
    shards = int(os.environ.get("INGEST_SHARDS") or "1")
    events = [EVENTS_STREAM] if shards <= 1 else [f"{EVENTS_STREAM}:{n}" for n in range(shards)]
    return [*events, CHANGES_STREAM]


async def read_lag(redis: Redis, streams: list[str]) -> dict[tuple[str, str], int]:
    """(stream, group) -> entries behind, for every group of every existing stream."""
    found: dict[tuple[str, str], int] = {}
    for stream in streams:
        if not await redis.exists(stream):
            continue
        for group in await redis.xinfo_groups(stream):
            name = group["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            # lag is None when Redis cannot tell (entries deleted by MAXLEN): pending only.
            found[(stream, name)] = int(group.get("lag") or 0) + int(group["pending"])
    return found


def _publish_lag(fresh: dict[tuple[str, str], int], shown: set[tuple[str, str]]) -> None:
    for stream_group, behind in fresh.items():
        STREAM_LAG.labels(*stream_group).set(behind)
    for gone in shown - fresh.keys():  # a group or stream deleted: no stale series
        STREAM_LAG.remove(*gone)
    shown.clear()
    shown.update(fresh)


def start_lag_watch(redis: Redis) -> asyncio.Task[None] | None:
    """Refresh the stream lag gauge in the background (once per process, only while
    metrics are on); the task, for its owner to cancel, or None."""
    global _watching
    if not _enabled or _watching:
        return None
    _watching = True

    async def watch() -> None:
        global _watching
        streams = lag_streams()
        shown: set[tuple[str, str]] = set()
        try:
            while True:
                try:
                    _publish_lag(await read_lag(redis, streams), shown)
                except Exception:
                    log.exception("reading stream lag failed; retrying")
                await asyncio.sleep(LAG_EVERY_SECONDS)
        finally:
            _watching = False

    return asyncio.create_task(watch())
