"""Property: any arrival order (and batching) of the same events gives the same
profiles, identifiers and traits (design.md section 5: order independence)."""

import asyncio
import itertools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from tests.integration.ingest.support import NOW_US, profile_views

pytestmark = pytest.mark.integration

USERS = ["u1", "u2", "u3"]
# Each anonymous id belongs to at most one person, as with real devices: which user an
# anonymous id shared by two users joins is first-come by design, not order-free.
ANONS = {"a1": "u1", "a2": "u1", "a3": "u2", "a4": None, "a5": "u3"}


@st.composite
def histories(draw):  # type: ignore[no-untyped-def]
    count = draw(st.integers(2, 14))
    times = draw(st.lists(st.integers(0, 10_000), min_size=count, max_size=count, unique=True))
    events = []
    for i, offset in enumerate(times):
        anon = draw(st.sampled_from([None, *ANONS]))
        owner = ANONS.get(anon) if anon else None
        user = owner if anon and owner and draw(st.booleans()) else None
        if anon is None:
            user = draw(st.sampled_from(USERS))
        kind = draw(st.sampled_from(["track", "identify"]))
        traits = None
        if kind == "identify":
            traits = draw(
                st.dictionaries(
                    st.sampled_from(["plan", "city", "age"]),
                    st.one_of(st.none(), st.integers(0, 9), st.sampled_from(["x", "y"])),
                    max_size=3,
                )
            )
        events.append(
            RawEvent(
                type=kind,
                message_id=f"e{i}",
                user_id=user or "",
                anonymous_id=anon or "",
                event="Viewed" if kind == "track" else "",
                timestamp_us=NOW_US - 20_000 + offset,
                traits=orjson.dumps(traits) if traits is not None else None,
            )
        )
    order = draw(st.permutations(range(count)))
    cuts = sorted(draw(st.sets(st.integers(1, count - 1), max_size=3)))
    return events, order, cuts


async def _ingest(ingestor: Ingestor, workspace_id: str, events, cuts) -> None:  # type: ignore[no-untyped-def]
    bounds = [0, *cuts, len(events)]
    for start, end in itertools.pairwise(bounds):
        await ingestor.ingest(workspace_id, events[start:end])


async def test_any_permutation_gives_the_same_profiles_and_traits(resources) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    ingestor = Ingestor(
        SqlEventStore(resources.engine), RedisPublisher(resources.redis), resources.clock
    )

    def run(coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(histories())
    def check(history) -> None:  # type: ignore[no-untyped-def]
        events, order, cuts = history
        in_order, _, _ = run(resources.keys.create_workspace("in order"))
        shuffled, _, _ = run(resources.keys.create_workspace("shuffled"))
        run(_ingest(ingestor, in_order, events, []))
        run(_ingest(ingestor, shuffled, [events[i] for i in order], cuts))
        expected = run(profile_views(resources.engine, in_order))
        assert run(profile_views(resources.engine, shuffled)) == expected

    await asyncio.to_thread(check)
