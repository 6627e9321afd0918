"""A group's writes are one transaction: a failure part-way through its statements
leaves nothing of it in Postgres, so the client's retry is accepted, not taken for a
duplicate of a half-written first attempt."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from sqlalchemy import func, select

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent, Status
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.ingest.tables import event_ids
from services.shared.db.tables import events, identities, profile_traits, profiles
from tests.integration.ingest.support import NOW_US, stream_entries

pytestmark = pytest.mark.integration


class FailingCopy(SqlEventStore):
    """The real store whose events insert fails once, after the group's profiles,
    identities and event ids were written in the same transaction."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        super().__init__(engine)
        self.fail = True

    @asynccontextmanager
    async def write_session(self, workspace_id: str, held=None, shards=(0,)) -> AsyncIterator:  # type: ignore[no-untyped-def,type-arg]
        async with super().write_session(workspace_id, held, shards) as session:
            insert_events = session._insert_events

            async def failing(*args):  # type: ignore[no-untyped-def]
                if self.fail:
                    self.fail = False
                    raise RuntimeError("injected failure between two statements")
                return await insert_events(*args)

            session._insert_events = failing  # type: ignore[method-assign]
            yield session


def events_of_one_request() -> list[RawEvent]:
    return [
        RawEvent(
            type="identify",
            message_id=f"m{i}",
            user_id=f"u{i}",
            anonymous_id=f"a{i}",
            timestamp_us=NOW_US - 100 + i,
            traits=orjson.dumps({"plan": "pro"}),
        )
        for i in range(3)
    ]


async def test_a_failure_between_statements_writes_nothing(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    store = FailingCopy(resources.engine)
    ingestor = Ingestor(store, RedisPublisher(resources.redis), resources.clock)
    with pytest.raises(RuntimeError, match="injected"):
        await ingestor.ingest(ws, events_of_one_request())
    async with resources.engine.connect() as connection:
        for table in (event_ids, events, identities, profiles, profile_traits):
            count = select(func.count()).select_from(table).where(table.c.workspace_id == ws)
            assert (await connection.execute(count)).scalar() == 0, table.name
    assert await stream_entries(resources.redis) == []

    retry = await ingestor.ingest(ws, events_of_one_request())
    assert [o.status for o in retry.outcomes] == [Status.ACCEPTED] * 3
