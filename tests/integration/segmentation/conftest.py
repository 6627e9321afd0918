"""Fixtures of the segmentation integration tests."""

from pathlib import Path

import pytest

from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.integration.segmentation.apisupport import api

__all__ = ["api", "sqlite_url"]


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file, for tests that check both dialects."""
    url = f"sqlite+aiosqlite:///{tmp_path}/seg.db"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    return url
