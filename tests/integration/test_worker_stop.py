"""A service's stop never waits forever on a background worker: one that ignores its
cancellation is logged by name and left behind after WORKER_STOP_SECONDS, so a SIGTERM
drain (and `make run`'s exit) still ends; a worker that ends with an error raises it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from services.shared import server as server_module
from services.shared.server import Resources, ServiceSpec, start_service

pytestmark = pytest.mark.integration


def _nothing(server: grpc.aio.Server, resources: Resources) -> list[str]:
    return []


RELEASED = asyncio.Event()


async def _stubborn() -> None:
    """Ignores its cancellations (as a loop catching BaseException would) until the
    test releases it."""
    while not RELEASED.is_set():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


async def _failing() -> None:
    raise RuntimeError("the worker broke")


async def test_a_worker_ignoring_its_cancellation_is_left_behind_by_name(
    resources: Resources, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server_module, "WORKER_STOP_SECONDS", 0.5)
    spec = ServiceSpec("stubborn", _nothing, workers=lambda resources: [_stubborn()])
    running = await start_service(spec, resources, 0)
    with caplog.at_level(logging.ERROR, logger="services.shared.server"):
        await asyncio.wait_for(running.stop(grace=0.1), 10)
    assert "worker _stubborn did not stop" in caplog.text
    stuck: Any = running.tasks[0]
    assert not stuck.done()
    RELEASED.set()
    stuck.cancel()  # now it ends
    await asyncio.wait_for(stuck, 10)


async def test_a_worker_that_failed_raises_at_stop(resources: Resources) -> None:
    spec = ServiceSpec("failing", _nothing, workers=lambda resources: [_failing()])
    running = await start_service(spec, resources, 0)
    with pytest.raises(RuntimeError, match="the worker broke"):
        await running.stop(grace=0.1)
