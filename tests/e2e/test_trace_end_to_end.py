"""One event's trace across every process it passes through, read from the span files
the processes write (OTEL_TRACES_EXPORTER=file): the client's call into ingest (its
RPC span, the group write with its INSERT), the stream hop to the realtime worker (the
trace context rides in the stream entry), the worker's evaluation and the membership
change it makes, and the sync delivering that change to a local webhook, which receives
the trace context in its headers. One trace id, and every span's parent is the span it
ran under. The same run serves metrics: the sync process's API latency and the realtime
worker's evaluation latency and consumer group lag, on their Prometheus endpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)
from cryptography.fernet import Fernet
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from services.shared import telemetry
from services.shared.timestamps import timestamp_from_us
from tests.conftest import WorkspaceKeys
from tests.helpers.audiences import wait_live
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes
from tests.helpers.syncs import create_webhook_sync
from tests.helpers.waiting import eventually
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.e2e

SECRET = "trace-me"
BUYERS = {"event": {"name": "Purchased", "window": {"within_days": 7}}}


async def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A process's /metrics: sample name -> [(labels, value)]."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
            text = await answer.text()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def metrics_env(port: int) -> dict[str, str]:
    """Settings serving a process's metrics on `port`."""
    return {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": str(port)}


def read_spans(folder: Path) -> list[dict[str, Any]]:
    """Every span every process has written so far."""
    return [
        orjson.loads(line)
        for path in sorted(folder.glob("spans-*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line
    ]


async def test_one_event_is_one_trace_from_ingest_to_the_webhook(
    database_url: str, redis_url: str, workspace: WorkspaceKeys, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = telemetry.setup_tracing("test-client", "none", exporter)
    assert provider is not None
    env = {
        "OTEL_TRACES_EXPORTER": "file",
        "OTEL_EXPORTER_FILE_PATH": str(tmp_path / "spans-{pid}.jsonl"),
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms: the test reads files
        "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
        "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
        "SEGMENTATION_RECONCILE_SECONDS": "0",
        "REALTIME_BLOCK_MS": "50",
    }
    admin = bearer(workspace.admin)
    sync_metrics, worker_metrics = free_port(), free_port()
    async with (
        webhook(SECRET) as receiver,
        as_processes(database_url, redis_url, ["ingest", "segmentation"], env) as addresses,
        as_processes(
            database_url, redis_url, ["sync"], {**env, **metrics_env(sync_metrics)}
        ) as sync_address,
        realtime_worker(database_url, redis_url, "traced", {**env, **metrics_env(worker_metrics)}),
        grpc.aio.insecure_channel(
            addresses["ingest"], interceptors=telemetry.client_interceptors()
        ) as ingest_channel,
        grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation_channel,
        grpc.aio.insecure_channel(sync_address["sync"]) as sync_channel,
    ):
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
        sync = sync_pb2_grpc.SyncServiceStub(sync_channel)
        await segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="buyers", definition=orjson.dumps(BUYERS), realtime=True
                )
            ),
            metadata=admin,
        )
        await wait_live(segmentation, "buyers", admin)
        created = await create_webhook_sync(
            sync, admin, receiver.url, SECRET, "buyers", cadence=sync_pb2.SYNC_CADENCE_HOURLY
        )
        # The first run finds nobody and leaves the cursor at the log's end.
        await sync.RunSync(sync_pb2.RunSyncRequest(id=created.id), metadata=admin)

        with trace.get_tracer("test").start_as_current_span("app sends a purchase") as root:
            event = ingest_pb2.Event(
                type=ingest_pb2.EVENT_TYPE_TRACK, user_id="ann", event="Purchased"
            )
            event.message_id = "traced-1"
            event.timestamp.CopyFrom(timestamp_from_us(int(time.time() * 1e6) - 60_000_000))
            reply = await ingest_pb2_grpc.IngestServiceStub(ingest_channel).Batch(
                ingest_pb2.BatchRequest(events=[event]), metadata=bearer(workspace.ingest)
            )
            assert reply.accepted == 1
        trace_id = format(root.get_span_context().trace_id, "032x")

        async def ann_entered() -> bool:
            members = await segmentation.ListMembers(
                segmentation_pb2.ListMembersRequest(audience_key="buyers"), metadata=admin
            )
            return len(members.members) == 1

        await eventually(ann_entered, 20, "ann to enter buyers through the realtime worker")
        run = await sync.RunSync(sync_pb2.RunSyncRequest(id=created.id), metadata=admin)
        assert run.added == 1
        assert len(receiver.requests) == 1

        async def delivered() -> list[dict[str, Any]] | None:
            spans = [s for s in read_spans(tmp_path) if s["trace_id"] == trace_id]
            return spans if any(s["name"] == "sync.deliver" for s in spans) else None

        spans = await eventually(delivered, 20, "the delivery span in the event's trace")

        served = await scrape(sync_metrics)
        run_syncs = [
            value
            for labels, value in served["rpc_server_duration_seconds_count"]
            if labels["rpc_method"] == "/audiences.v1.SyncService/RunSync"
            and labels["rpc_grpc_status_code"] == "OK"
        ]
        assert run_syncs == [2.0]

        async def worker_metrics_read() -> dict[str, Any] | None:
            served = await scrape(worker_metrics)
            lag = [
                value
                for labels, value in served.get("audiences_stream_lag", [])
                if labels == {"stream": "stream:events", "group": "segmentation-realtime"}
            ]
            return served if lag == [0.0] else None

        served = await eventually(worker_metrics_read, 20, "the worker's group lag to read 0")
        (evaluations,) = served["audiences_realtime_evaluation_duration_seconds_count"]
        assert evaluations[1] >= 1

    provider.force_flush()
    client = [
        s for s in exporter.get_finished_spans() if s.context.trace_id == root.context.trace_id
    ]
    by_id = {s["span_id"]: s for s in spans}
    by_id.update({format(s.context.span_id, "016x"): {"name": s.name} for s in client})

    def one(name: str, service: str) -> dict[str, Any]:
        found = [s for s in spans if s["name"] == name and s["service"] == service]
        assert len(found) == 1, (name, service, [(s["name"], s["service"]) for s in spans])
        return found[0]

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_span_id"]]

    rpc = one("/audiences.v1.IngestService/Batch", "ingest")
    assert parent(rpc)["name"] == "/audiences.v1.IngestService/Batch"  # the client's span
    write = one("ingest.write", "ingest")
    assert write["parent_span_id"] == rpc["span_id"]
    insert = one("INSERT events", "ingest")
    assert insert["parent_span_id"] == write["span_id"]
    # The stream hop: the worker continues the RPC's context from the entry's fields.
    evaluate = one("segmentation.realtime.evaluate", "segmentation-realtime")
    assert evaluate["parent_span_id"] == rpc["span_id"]
    change = one("segmentation.membership_change", "segmentation-realtime")
    assert change["parent_span_id"] == evaluate["span_id"]
    assert change["attributes"]["audiences.change"] == "entered"
    deliver = one("sync.deliver", "sync")
    assert deliver["parent_span_id"] == change["span_id"]
    # The webhook got the delivery's context: it could continue the same trace.
    headers = {k.lower(): v for k, v in receiver.requests[0].headers.items()}
    _, sent_trace, sent_parent, _ = headers["traceparent"].split("-")
    assert (sent_trace, sent_parent) == (trace_id, deliver["span_id"])
    # Every span of the trace hangs off a span of the trace, up to the client's root.
    for span in spans:
        assert span["parent_span_id"] in by_id, span["name"]
