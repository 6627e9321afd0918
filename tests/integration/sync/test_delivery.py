"""Delivery guarantees against a real webhook server that fails on a script: retried
failures still deliver every change exactly once and in order, refusals dead-letter,
signatures verify, and the size guardrail pauses a mass removal."""

from __future__ import annotations

import time
from collections import defaultdict

import grpc
import orjson
import pytest
from audiences.v1 import sync_pb2

from services.sync.destinations.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import get_sync, run, webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "another-signing-secret"


async def _people(api: SyncApi, n: int) -> list[int]:
    pids = [await api.log.profile(email=f"p{i}@example.com") for i in range(n)]
    return pids


async def test_scripted_failures_still_deliver_every_change_once_and_in_order(
    api: SyncApi,
) -> None:
    audience = await api.log.audience("churn")
    pids = await _people(api, 4)
    script = [
        (500, {}, 0.0),
        (429, {"Retry-After": "1"}, 0.0),
        (503, {}, 1.0),  # slower than the destination's timeout: the client gives up
        (502, {}, 0.0),
        (429, {}, 0.0),
    ]
    async with webhook(SECRET, script) as receiver:
        sync = await webhook_sync(
            api, receiver.url, SECRET, "churn", batch_size=3, timeout_seconds=0.3
        )
        assert (await run(api, sync.id)).added == 0  # the audience is empty: cursor 0
        # Each person enters, exits and enters again, interleaved with the others.
        expected: dict[str, list[str]] = defaultdict(list)
        for entered in (True, False, True):
            for i, pid in enumerate(pids):
                await api.log.change(audience, pid, entered=entered)
                expected[f"p{i}@example.com"].append("added" if entered else "removed")
        started = time.monotonic()
        result = await run(api, sync.id)
        assert result.status == "succeeded", result.error
        assert (result.added, result.removed, result.retries) == (8, 4, len(script))
        by_person: dict[str, list[str]] = defaultdict(list)
        for change in receiver.applied:
            by_person[change["id"]].append(change["action"])
        assert by_person == expected
        seqs = [c["seq"] for c in receiver.applied]
        assert seqs == sorted(set(seqs)) and len(seqs) == 12
        # The 429 asked for a second's pause, and got at least that.
        assert time.monotonic() - started >= 1
        assert (await get_sync(api, sync.id)).cursor == result.to_cursor == 12


async def test_every_request_is_signed_with_the_secret(api: SyncApi) -> None:
    audience = await api.log.audience("signed")
    for pid in await _people(api, 3):
        await api.log.change(audience, pid, entered=True)
    async with webhook(SECRET) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "signed", batch_size=1)
        assert (await run(api, sync.id)).added == 3
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        stamp, header = request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER]
        assert verify(SECRET, stamp, request.body, header)
        assert not verify("wrong-secret", stamp, request.body, header)
        assert not verify(SECRET, stamp, request.body + b" ", header)
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    assert len(set(keys)) == 3


async def test_a_refused_batch_is_dead_lettered_and_a_redrive_delivers_it(
    api: SyncApi,
) -> None:
    audience = await api.log.audience("refusals")
    pids = await _people(api, 4)
    async with webhook(SECRET, [(200, {}, 0.0), (400, {}, 0.0)]) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "refusals", batch_size=2)
        await run(api, sync.id)  # empty backfill
        for pid in pids:
            await api.log.change(audience, pid, entered=True)
        result = await run(api, sync.id)
        assert (result.status, result.added, result.failed, result.retries) == (
            "dead_lettered",
            2,
            2,
            0,
        )
        [letter] = result.dead_letters
        assert (letter.status_code, letter.first_seq, letter.last_seq, letter.changes) == (
            400,
            3,
            4,
            2,
        )
        assert letter.response_body == "scripted 400"
        assert not letter.HasField("redriven_at")
        assert [c["id"] for c in receiver.applied] == ["p0@example.com", "p1@example.com"]
        assert (await get_sync(api, sync.id)).cursor == 4
        refused = orjson.loads(receiver.requests[-1].body)
        assert [c["seq"] for c in refused["changes"]] == [3, 4]

        # The receiver is fixed (its script is spent): a re-drive delivers the letter.
        redrive = await api.stub.RedriveDeadLetters(
            sync_pb2.RedriveDeadLettersRequest(sync_id=sync.id), metadata=api.metadata
        )
        assert (redrive.status, redrive.added, redrive.batches) == ("succeeded", 2, 1)
        assert [c["id"] for c in receiver.applied[2:]] == ["p2@example.com", "p3@example.com"]
        assert receiver.requests[-1].headers["Idempotency-Key"] == letter.idempotency_key
        again = await api.stub.RedriveDeadLetters(
            sync_pb2.RedriveDeadLettersRequest(sync_id=sync.id), metadata=api.metadata
        )
        assert again.batches == 0 and len(receiver.applied) == 4
    runs = await api.stub.ListSyncRuns(
        sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=api.metadata
    )
    [listed] = [d for r in runs.runs for d in r.dead_letters]
    assert listed.id == letter.id and listed.HasField("redriven_at")
    assert (await get_sync(api, sync.id)).cursor == 4


async def test_a_destination_that_never_answers_fails_the_run_and_keeps_the_cursor(
    api: SyncApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    audience = await api.log.audience("down")
    pid = (await _people(api, 1))[0]
    async with webhook(SECRET, [(503, {}, 0.0)] * 8) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "down")
        await run(api, sync.id)
        await api.log.change(audience, pid, entered=True)
        failed = await run(api, sync.id)
        assert failed.status == "failed" and "8 attempts" in failed.error
        assert (await get_sync(api, sync.id)).cursor == 0
        again = await run(api, sync.id)  # the destination is back
        assert (again.status, again.added, again.from_cursor) == ("succeeded", 1, 0)
        assert [c["id"] for c in receiver.applied] == ["p0@example.com"]


async def test_the_guardrail_pauses_a_mass_removal_until_an_operator_resumes(
    api: SyncApi,
) -> None:
    audience = await api.log.audience("list")
    pids = await _people(api, 4)
    for pid in pids:
        await api.log.change(audience, pid, entered=True)
    async with webhook(SECRET) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "list", batch_size=10)
        assert (await run(api, sync.id)).added == 4
        for pid in pids[:3]:  # 75% of the destination's members leave at once
            await api.log.change(audience, pid, entered=False)
        held = await run(api, sync.id)
        assert (held.status, held.removed) == ("paused", 0)
        assert "guardrail" in held.error
        paused = await get_sync(api, sync.id)
        assert paused.paused and "3 of the 4" in paused.paused_reason and paused.cursor == 4
        assert len(receiver.applied) == 4
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await run(api, sync.id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        paused.paused = False
        resumed = await api.stub.UpdateSync(
            sync_pb2.UpdateSyncRequest(sync=paused), metadata=api.metadata
        )
        assert not resumed.paused and resumed.paused_reason == ""
        released = await run(api, sync.id)
        assert (released.status, released.removed) == ("succeeded", 3)
        assert [c["action"] for c in receiver.applied[4:]] == ["removed"] * 3
