"""ExportAudience over the real API: the three CSV formats round-trip through Python's
csv module, big audiences stream in several chunks with progress."""

from __future__ import annotations

import csv
import hashlib
import io

import grpc
import orjson
import pytest
from audiences.v1 import sync_pb2

from services.shared.errors import field_violations
from tests.integration.sync.conftest import SyncApi

pytestmark = pytest.mark.integration


async def _export(
    api: SyncApi, **fields: object
) -> tuple[list[dict[str, str]], list[sync_pb2.ExportChunk]]:
    chunks = [
        chunk
        async for chunk in api.stub.ExportAudience(
            sync_pb2.ExportAudienceRequest(**fields),  # type: ignore[arg-type]
            metadata=api.metadata,
        )
    ]
    text = b"".join(c.csv for c in chunks).decode()
    return list(csv.DictReader(io.StringIO(text))), chunks


async def _audience(api: SyncApi) -> dict[str, int]:
    log = api.log
    audience = await log.audience("export_me")
    ann = await log.profile(email="ann@example.com", user_id="u,ann")  # a comma to quote
    ann_old = await log.profile(email="ann.old@example.com")
    await log.merge(ann_old, ann)
    bob = await log.profile(user_id='u"bob"')
    outsider = await log.profile(email="out@example.com")
    for pid in (ann, bob):
        await log.change(audience, pid, entered=True)
    return {"ann": ann, "bob": bob, "outsider": outsider}


async def test_unformatted_export_round_trips(api: SyncApi) -> None:
    people = await _audience(api)
    rows, chunks = await _export(
        api, audience_key="export_me", format=sync_pb2.EXPORT_FORMAT_UNFORMATTED
    )
    found = {r["id"]: orjson.loads(r["external_ids"]) for r in rows}
    assert found == {
        str(people["ann"]): [
            {"type": "email", "id": "ann.old@example.com"},
            {"type": "email", "id": "ann@example.com"},
            {"type": "user_id", "id": "u,ann"},
        ],
        str(people["bob"]): [{"type": "user_id", "id": 'u"bob"'}],
    }
    assert chunks[-1].members_done == chunks[-1].members_total == 2


async def test_formatted_export_has_indexed_columns(api: SyncApi) -> None:
    people = await _audience(api)
    rows, _ = await _export(api, audience_key="export_me", format=sync_pb2.EXPORT_FORMAT_FORMATTED)
    assert list(rows[0]) == ["id", "email", "email_1", "user_id"]
    assert rows == [
        {
            "id": str(people["ann"]),
            "email": "ann.old@example.com",
            "email_1": "ann@example.com",
            "user_id": "u,ann",
        },
        {"id": str(people["bob"]), "email": "", "email_1": "", "user_id": 'u"bob"'},
    ]


async def test_single_column_export_is_hashed_unless_raw(api: SyncApi) -> None:
    await _audience(api)
    hashed, _ = await _export(
        api, audience_key="export_me", format=sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN, id_type="email"
    )
    emails = ["ann.old@example.com", "ann@example.com"]
    assert hashed == [{"email_sha256": hashlib.sha256(e.encode()).hexdigest()} for e in emails]
    raw, _ = await _export(
        api,
        audience_key="export_me",
        format=sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN,
        id_type="email",
        raw=True,
    )
    assert raw == [{"email": e} for e in emails]


async def test_a_large_export_streams_in_chunks_with_progress(api: SyncApi) -> None:
    audience = await api.log.audience("big")
    await api.log.members(audience, 3_000)
    rows, chunks = await _export(api, audience_key="big", format=sync_pb2.EXPORT_FORMAT_UNFORMATTED)
    assert len(rows) == 3_000 and len({r["id"] for r in rows}) == 3_000
    assert len(chunks) > 1
    done = [c.members_done for c in chunks]
    assert done == sorted(done) and done[-1] == 3_000
    assert {c.members_total for c in chunks} == {3_000}
    assert sum(c.rows for c in chunks) == 3_001  # with the header


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"audience_key": "export_me"}, grpc.StatusCode.INVALID_ARGUMENT, "format"),
        (
            {"audience_key": "export_me", "format": sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN},
            grpc.StatusCode.INVALID_ARGUMENT,
            "id_type",
        ),
        (
            {"audience_key": "nope", "format": sync_pb2.EXPORT_FORMAT_FORMATTED},
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ],
)
async def test_bad_export_requests_are_refused(
    api: SyncApi, fields: dict[str, object], code: grpc.StatusCode, field: str | None
) -> None:
    await _audience(api)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _export(api, **fields)
    assert refused.value.code() == code
    if field:
        assert field in [v.field for v in field_violations(refused.value)]


async def test_values_with_newlines_backslashes_and_tabs_round_trip(api: SyncApi) -> None:
    audience = await api.log.audience("odd")
    odd = ["line\nbreak", "back\\slash", "tab\there", 'cr\r"q"']
    pids = [await api.log.profile(user_id=value) for value in odd]
    for pid in pids:
        await api.log.change(audience, pid, entered=True)
    formatted, chunks = await _export(
        api, audience_key="odd", format=sync_pb2.EXPORT_FORMAT_FORMATTED
    )
    assert [r["user_id"] for r in formatted] == odd
    assert sum(c.rows for c in chunks) == len(odd) + 1
    unformatted, _ = await _export(
        api, audience_key="odd", format=sync_pb2.EXPORT_FORMAT_UNFORMATTED
    )
    assert [orjson.loads(r["external_ids"])[0]["id"] for r in unformatted] == odd
    hashed, chunks = await _export(
        api, audience_key="odd", format=sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN, id_type="user_id"
    )
    assert [r["user_id_sha256"] for r in hashed] == [
        hashlib.sha256(v.encode()).hexdigest() for v in odd
    ]
    assert chunks[-1].members_done == len(odd)
