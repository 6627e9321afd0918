"""Waiting for an audience's backfill through the public API (shared by the tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from audiences.v1 import segmentation_pb2


async def wait_live(
    segmentation: Any,
    key: str,
    metadata: Any,
    version: int | None = None,
    within: float = 20,
) -> segmentation_pb2.Audience:
    """Poll GetAudience until the audience (that `version`, if given) is LIVE: a
    deadline, not a fixed sleep. A FAILED audience fails at once."""
    deadline = time.monotonic() + within
    while True:
        audience = await segmentation.GetAudience(
            segmentation_pb2.GetAudienceRequest(key=key), metadata=metadata
        )
        if audience.state == segmentation_pb2.AUDIENCE_STATE_LIVE and (
            version is None or audience.version == version
        ):
            return audience
        assert audience.state != segmentation_pb2.AUDIENCE_STATE_FAILED, audience
        if time.monotonic() > deadline:
            raise TimeoutError(f"audience {key} not live: {audience}")
        await asyncio.sleep(0.02)  # polling a condition with a deadline
