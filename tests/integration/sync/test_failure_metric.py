"""A batch the destination refuses counts in the sync failures metric
(`audiences_sync_failures_total{reason="refused"}`, services/shared/metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import run, webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "metric-signing-secret"


def refused() -> float:
    """The counter's current value for refused batches (0 before the first)."""
    value = REGISTRY.get_sample_value("audiences_sync_failures_total", {"reason": "refused"})
    return value or 0.0


async def test_a_refused_batch_counts_as_a_sync_failure(api: SyncApi) -> None:
    audience = await api.log.audience("refused-metric")
    async with webhook(SECRET, [(400, {}, 0.0)]) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "refused-metric", batch_size=5)
        await run(api, sync.id)  # empty backfill
        before = refused()
        await api.log.change(audience, await api.log.profile(email="r@example.com"), entered=True)
        result = await run(api, sync.id)
    assert result.status == "dead_lettered"
    assert refused() == before + 1
