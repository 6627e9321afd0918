"""Create an audience and read it back."""

import pytest

from tests.integration.segmentation.apisupport import api  # noqa: F401

pytestmark = pytest.mark.integration


async def test_smoke(api) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    await api.send([{"user_id": "u1", "event": "Order Completed"}] * 1)
    await api.create("buyers", {"event": {"name": "Order Completed"}})
    a = await api.live("buyers")
    assert a.size == 1
    assert await api.members("buyers") == ["u1"]
