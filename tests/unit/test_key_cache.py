"""The API key cache: one lookup per key however many requests wait for it, renewal
ahead of expiry without making a request wait, and nothing served past its time.

The database lookup is replaced by a gated counter (this is the cache's logic only;
tests/integration/test_auth.py runs the real lookup)."""

from __future__ import annotations

import asyncio

import pytest

from services.shared import auth
from services.shared.auth import KeyStore, Principal
from services.shared.errors import Unauthenticated

TTL = 30.0
PRINCIPAL = Principal("key_1", "ws_1", frozenset({"profile:read"}))


class GatedKeyStore(KeyStore):
    """A KeyStore whose lookups are counted and finish only when the gate opens."""

    def __init__(self) -> None:
        super().__init__(engine=None, cache_seconds=TTL)  # type: ignore[arg-type]
        self.lookups = 0
        self.gate = asyncio.Event()
        self.answer: Principal | Exception | None = PRINCIPAL

    async def _lookup(self, digest: str) -> Principal | None:
        self.lookups += 1
        answer = self.answer  # the database as it was when the lookup was sent
        await self.gate.wait()
        if isinstance(answer, Exception):
            raise answer
        return answer


async def settle() -> None:
    """Let every task that can run now run (a few loop passes; nothing waits on time)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's clock, set by the test."""
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    return clock


async def test_concurrent_requests_share_one_lookup(now: list[float]) -> None:
    keys = GatedKeyStore()
    waiting = [asyncio.create_task(keys.authenticate("secret")) for _ in range(20)]
    await settle()
    keys.gate.set()
    assert await asyncio.gather(*waiting) == [PRINCIPAL] * 20
    assert keys.lookups == 1


async def test_a_key_in_use_is_renewed_while_requests_are_answered_from_the_cache(
    now: list[float],
) -> None:
    keys = GatedKeyStore()
    keys.gate.set()
    await keys.authenticate("secret")
    keys.gate.clear()  # renewals now hang until the test lets them finish

    now[0] += TTL * 0.4  # young entry: no renewal
    assert await keys.authenticate("secret") == PRINCIPAL
    assert keys.lookups == 1
    now[0] += TTL * 0.2  # past half its life: answered at once, one renewal started
    for _ in range(5):
        assert await keys.authenticate("secret") == PRINCIPAL
    await settle()
    assert keys.lookups == 2
    keys.gate.set()
    await settle()
    now[0] += TTL * 0.9  # beyond the first entry's life, inside the renewed one's
    assert await keys.authenticate("secret") == PRINCIPAL
    assert keys.lookups == 2


async def test_a_revocation_seen_by_the_renewal_takes_effect(now: list[float]) -> None:
    keys = GatedKeyStore()
    keys.gate.set()
    await keys.authenticate("secret")
    keys.answer = None  # revoked in the database
    now[0] += TTL * 0.6
    assert await keys.authenticate("secret") == PRINCIPAL  # still within its time
    await settle()
    with pytest.raises(Unauthenticated):
        await keys.authenticate("secret")


async def test_an_entry_is_never_served_past_its_time(now: list[float]) -> None:
    keys = GatedKeyStore()
    keys.gate.set()
    await keys.authenticate("secret")
    keys.answer = RuntimeError("database down")
    now[0] += TTL * 0.6
    assert await keys.authenticate("secret") == PRINCIPAL  # its renewal fails quietly
    await settle()
    now[0] += TTL * 0.5  # expired: the request's own lookup reports the failure
    with pytest.raises(RuntimeError, match="database down"):
        await keys.authenticate("secret")


async def test_a_caller_going_away_does_not_cancel_the_shared_lookup(now: list[float]) -> None:
    keys = GatedKeyStore()
    leaving = asyncio.create_task(keys.authenticate("secret"))
    staying = asyncio.create_task(keys.authenticate("secret"))
    await settle()
    leaving.cancel()
    keys.gate.set()
    assert await staying == PRINCIPAL
    assert keys.lookups == 1


async def test_forget_drops_a_lookup_in_flight(now: list[float]) -> None:
    keys = GatedKeyStore()
    before = asyncio.create_task(keys.authenticate("secret"))
    await settle()
    keys.forget()  # e.g. the key was revoked in this process meanwhile
    keys.answer = None
    keys.gate.set()
    assert await before == PRINCIPAL  # that request started before the revocation
    with pytest.raises(Unauthenticated):
        await keys.authenticate("secret")  # a fresh lookup, not the old answer cached
    assert keys.lookups == 2


async def test_unknown_keys_cannot_grow_the_cache_without_bound(
    now: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "MAX_CACHED_KEYS", 5)
    keys = GatedKeyStore()
    keys.gate.set()
    keys.answer = None
    for n in range(12):
        with pytest.raises(Unauthenticated):
            await keys.authenticate(f"random-{n}")
        assert len(keys._cache) <= 5
    assert keys.lookups == 12


async def test_a_full_cache_drops_the_least_recently_used_key(
    now: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "MAX_CACHED_KEYS", 3)
    keys = GatedKeyStore()
    keys.gate.set()
    for secret in ("in-use", "idle-1", "idle-2"):
        await keys.authenticate(secret)
    assert keys.lookups == 3
    keys.answer = None
    for n in range(4):
        # A flood of unknown keys, with the key in use seen between each of them.
        assert await keys.authenticate("in-use") == PRINCIPAL
        with pytest.raises(Unauthenticated):
            await keys.authenticate(f"random-{n}")
    assert keys.lookups == 3 + 4  # "in-use" was answered from the cache every time
    assert "in-use" in keys._cache
    assert "idle-1" not in keys._cache and "idle-2" not in keys._cache
