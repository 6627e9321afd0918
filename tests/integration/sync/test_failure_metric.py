"""A batch the destination refuses counts in the sync failures metric
(`audiences_sync_failures_total{reason="refused"}`, services/shared/metrics.py)."""

from __future__ import annotations

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import run, webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "metric-signing-secret"
_reader = InMemoryMetricReader()


def failures(reason: str) -> int:
    """The counter's current value for `reason` (0 before its first failure)."""
    data = _reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "audiences.sync.failures":
                    total += sum(
                        int(point.value)
                        for point in metric.data.data_points
                        if point.attributes.get("reason") == reason
                    )
    return total


async def test_a_refused_batch_counts_as_a_sync_failure(api: SyncApi) -> None:
    # The runner's counter is created at import on the global meter; a provider set now
    # (once per process) receives its measurements from here on.
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    audience = await api.log.audience("refused-metric")
    async with webhook(SECRET, [(400, {}, 0.0)]) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "refused-metric", batch_size=5)
        await run(api, sync.id)  # empty backfill
        before = failures("refused")
        await api.log.change(audience, await api.log.profile(email="r@example.com"), entered=True)
        result = await run(api, sync.id)
    assert result.status == "dead_lettered"
    assert failures("refused") == before + 1
