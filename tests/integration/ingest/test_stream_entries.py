"""What reaches the event stream. Payload JSON is encoded once: the text a client sent
is what the events COPY stores and what the stream entry carries; the stored values,
and the entries a catch-up rebuilds from Postgres, must equal what the request path
published. The request path's entries are exactly the catch-up's fields plus the
trace context of the request."""

import json

import orjson
import pytest

from services.ingest.ingestor import HotUpdate, Ingestor, SeenProfile, StreamRecord
from services.ingest.model import RawEvent, Status
from services.ingest.publisher import RedisPublisher, entry_fields
from services.ingest.store import SqlEventStore
from services.shared import hotstate
from tests.integration.ingest.support import NOW_US, stored_events, stream_entries

pytestmark = pytest.mark.integration

# Spacing, newlines, escapes and non-ASCII text as a client may send them.
SPACED = b'{ "sku" : "a\\u00e9\\"b" ,\n "n": 12, "nested": {"list": [1, 2.5, null, true]},'
SPACED += b' "name": "Zo\xc3\xab"\t}'
# An integer beyond 64 bits: orjson reads it as a float, jsonb keeps it exactly.
HUGE = b'{"big": 123456789012345678901234567890, "id": "1234567890123456789012"}'


def events() -> list[RawEvent]:
    return [
        RawEvent(
            type="track",
            message_id="t1",
            user_id="u1",
            event="Viewed",
            timestamp_us=NOW_US - 3,
            properties=SPACED,
            context=b'{"ip": "10.0.0.1",  "locale":"en-US"}',
        ),
        RawEvent(
            type="track",
            message_id="t2",
            user_id="u1",
            event="Ordered",
            timestamp_us=NOW_US - 2,
            properties=HUGE,
        ),
        # The HTTP gateway hands decoded objects over.
        RawEvent(
            type="page",
            message_id="p1",
            anonymous_id="a1",
            name="Home",
            timestamp_us=NOW_US - 1,
            properties={"path": "/", "tags": ["x", "ÿ"]},
        ),
        # RudderStack: identify traits only in context.traits.
        RawEvent(
            type="identify",
            message_id="i1",
            user_id="u2",
            timestamp_us=NOW_US,
            context=b'{"traits": {"plan": "pro", "seats": 3}}',
        ),
    ]


async def test_stored_and_published_payloads_equal_the_sent_ones_and_catch_up(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    ws = workspace.workspace_id
    store = SqlEventStore(resources.engine)
    ingestor = Ingestor(store, RedisPublisher(resources.redis), resources.clock)
    sent = events()
    outcome = await ingestor.ingest(ws, sent)
    assert [o.status for o in outcome.outcomes] == [Status.ACCEPTED] * len(sent)

    def decoded(value):  # type: ignore[no-untyped-def]
        return json.loads(value) if isinstance(value, bytes) else value  # exact integers

    rows = {r["message_id"]: r for r in await stored_events(resources.engine)}
    for raw in sent:
        assert rows[raw.message_id]["properties"] == decoded(raw.properties)
        assert rows[raw.message_id]["context"] == decoded(raw.context)
    assert rows["i1"]["traits"] == {"plan": "pro", "seats": 3}
    assert rows["t2"]["properties"]["big"] == 123456789012345678901234567890

    published = {
        fields["seq"]: orjson.loads(fields["event"])
        for _, fields in await stream_entries(resources.redis)
        if fields["kind"] == "event"
    }
    assert published[str(outcome.outcomes[0].seq)]["properties"] == orjson.loads(SPACED)
    assert published[str(outcome.outcomes[3].seq)]["traits"] == {"plan": "pro", "seats": 3}
    # What a catch-up would publish for the same events, rebuilt from Postgres.
    last = max(o.seq for o in outcome.outcomes if o.seq)
    async with resources.engine.connect() as connection:
        records, _ = await store.records_after(connection, 0, last, 100)
    rebuilt = {
        str(r.seq): orjson.loads(entry_fields(r)["event"]) for r in records if r.kind == "event"
    }
    assert rebuilt == published


async def test_request_path_entries_are_entry_fields_plus_their_trace(  # type: ignore[no-untyped-def]
    resources,
) -> None:
    """The stream script rebuilds each entry from a compact argument; it must write
    exactly the fields entry_fields() gives the catch-up, then the record's trace."""
    ws = "ws_entries"
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traces = [
        ("traceparent", parent),
        ("traceparent", parent, "tracestate", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"),
        (),
        ("traceparent", parent, "tracestate", ""),
    ]
    payload = orjson.dumps({"type": "track", "properties": {"q": 'a "b" \\ c\n'}})
    records = [
        StreamRecord(11, 0, ws, "event", 7, payload, trace=traces[0]),
        StreamRecord(11, 1, ws, "merge", survivor_id=3, merged_id=7, trace=traces[0]),
        StreamRecord(11, 2, ws, "merge", survivor_id=3, merged_id=9, trace=traces[0]),
        StreamRecord(12, 0, ws, "event", 3, b"{}", trace=traces[1]),
        StreamRecord(13, 0, ws, "event", 12345678901234, payload, trace=traces[2]),
        StreamRecord(14, 0, ws, "event", 3, payload, trace=traces[3]),
    ]
    publisher = RedisPublisher(resources.redis)
    hot = HotUpdate(ws, [], [], [SeenProfile(3, NOW_US - 10, NOW_US)])
    assert await publisher.apply(10, 14, 10, hot, records)

    def text(value):  # type: ignore[no-untyped-def]
        return value.decode() if isinstance(value, bytes) else value

    expected = [
        (
            f"{r.seq}-{r.sub}",
            {
                **{k: text(v) for k, v in entry_fields(r).items()},
                **dict(zip(r.trace[::2], r.trace[1::2], strict=True)),
            },
        )
        for r in records
    ]
    assert await stream_entries(resources.redis) == expected
    # The seen-only profile's meta, sent as plain numbers.
    meta = await resources.redis.hgetall(hotstate.profile_key(ws, 3, "meta"))
    assert meta == {b"created_at_us": b"%d" % (NOW_US - 10), b"last_seen_us": b"%d" % NOW_US}
    older = HotUpdate(ws, [], [], [SeenProfile(3, NOW_US - 99, NOW_US - 1)])
    assert await publisher.apply(14, 14, 10, older, [])
    assert await resources.redis.hgetall(hotstate.profile_key(ws, 3, "meta")) == meta
    # A batch for another workspace than its hot update's is refused, not mixed up,
    # and so is a trace field that would shift the fields after it.
    with pytest.raises(ValueError):
        await publisher.apply(14, 15, 10, HotUpdate("ws_other", [], []), records[-1:])
    bad_trace = records[-1]._replace(seq=15, trace=("traceparent", "a\nb"))
    with pytest.raises(ValueError):
        await publisher.apply(14, 15, 10, HotUpdate(ws, [], []), [bad_trace])
    assert len(await stream_entries(resources.redis)) == len(records)
