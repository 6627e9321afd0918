"""OpenTelemetry metrics of every process, served to Prometheus.

OTEL_METRICS_EXPORTER=prometheus (default none: nothing is served or recorded) serves
`/metrics` on OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT (default
127.0.0.1:9464). What it exposes, as Prometheus names:

- `rpc_server_duration_seconds` (histogram): every API call's latency, by
  `rpc_method` and `rpc_grpc_status_code` (services/shared/server.py).
- `audiences_stream_lag` (gauge): per `stream` and consumer `group`, the entries the
  group is behind by (not yet delivered to it plus delivered but not acknowledged),
  read with XINFO GROUPS every few seconds. Every process reports it, so dashboards and
  the HPA of stream workers take the max per (stream, group) (docs/operations.md).
- `audiences_realtime_evaluation_duration_seconds` (histogram): one realtime batch
  evaluation of a workspace, from reading definitions to publishing its changes.
- `audiences_sync_failures_total` (counter): by `reason`: `refused` (a batch the
  destination refused after its retries: dead-lettered) or `run_failed` (a run that
  stopped: retries exhausted, claim lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from redis.asyncio import Redis

from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)

_meter = metrics.get_meter("audiences")

RPC_DURATION = _meter.create_histogram(
    "rpc.server.duration", unit="s", description="API call latency, by method and status"
)
REALTIME_EVALUATION = _meter.create_histogram(
    "audiences.realtime.evaluation.duration",
    unit="s",
    description="One realtime evaluation of a workspace's touched profiles",
)
SYNC_FAILURES = _meter.create_counter(
    "audiences.sync.failures", description="Sync batches refused (dead-lettered), runs failed"
)

# (stream, group) -> entries behind, refreshed by watch_stream_lag.
_lag: dict[tuple[str, str], int] = {}
_enabled = False
_watching = False
LAG_EVERY_SECONDS = 5.0


def _observe_lag(_options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(behind, {"stream": stream, "group": group})
        for (stream, group), behind in list(_lag.items())
    ]


_meter.create_observable_gauge(
    "audiences.stream.lag",
    callbacks=[_observe_lag],
    description="Entries a consumer group is behind by (undelivered + unacknowledged)",
)


def setup_metrics(service_name: str) -> bool:
    """Serve this process's metrics when OTEL_METRICS_EXPORTER=prometheus (first call
    wins); returns whether metrics are on."""
    global _enabled
    if _enabled:
        return True
    if os.environ.get("OTEL_METRICS_EXPORTER", "none") != "prometheus":
        return False
    # Imported here: only processes that serve metrics load the exporter.
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import start_http_server

    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    provider = MeterProvider(
        resource=Resource.create({"service.name": service_name}),
        # No otel_scope_* labels: series stay as named above, for queries and adapters.
        metric_readers=[PrometheusMetricReader(scope_info_enabled=False)],
    )
    metrics.set_meter_provider(provider)
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
        try:
            while True:
                try:
                    fresh = await read_lag(redis, streams)
                    _lag.clear()
                    _lag.update(fresh)
                except Exception:
                    log.exception("reading stream lag failed; retrying")
                await asyncio.sleep(LAG_EVERY_SECONDS)
        finally:
            _watching = False

    return asyncio.create_task(watch())
