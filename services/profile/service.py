"""The profile domain: what each Profile API call means, independent of the wire.

The servicer (gRPC) and the HTTP view both call this facade with the caller's
workspace. Reads of the live profile go to the hot state only; the timeline and
erasure go to Postgres through the store.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from services.profile.context_audiences import (
    RequestAudienceCache,
    context_audiences,
    encode_context_audiences,
)
from services.profile.exposures import ExposureLog
from services.profile.model import (
    Deletion,
    Erasure,
    EventPage,
    HotProfile,
    Identifier,
    ProfileQuery,
    Recommendation,
    Section,
    TimelineEvent,
)
from services.shared.clock import Clock
from services.shared.errors import FieldViolation, InvalidArgument, NotFound
from services.shared.holdout import in_holdout
from services.shared.request_context import build_context


class HotState(Protocol):
    """Reads and erasure of the Redis hot state (services.profile.hotread)."""

    async def read(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> list[HotProfile | None]: ...

    async def read_encoded(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> bytes | None: ...

    async def resolve(self, workspace_id: str, identifier: Identifier) -> HotProfile | None: ...

    async def read_for_context(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> tuple[bytes, str, list[str], str | None] | None: ...

    async def read_with_version(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> tuple[list[HotProfile | None], str | None]: ...

    async def audience_config(self, workspace_id: str) -> tuple[str, bytes] | None: ...

    async def erase(self, workspace_id: str, profile_ids: Sequence[int | str]) -> None: ...

    async def erase_identities(
        self, workspace_id: str, identifiers: Sequence[tuple[str, str]]
    ) -> None: ...

    async def erase_stream_entries(self, event_seqs: Sequence[int]) -> None: ...


class Records(Protocol):
    """The durable records (services.profile.store)."""

    async def resolve(self, workspace_id: str, identifier: Identifier) -> int | None: ...

    async def list_events(
        self,
        workspace_id: str,
        survivor_id: int,
        names: Sequence[str],
        limit: int,
        before: tuple[int, int] | None,
    ) -> list[TimelineEvent]: ...

    def erasing(
        self, workspace_id: str, survivor_id: int, now_us: int
    ) -> AbstractAsyncContextManager[Erasure]: ...


@dataclass(frozen=True)
class Recommendations:
    """A profile's recommendations; cold_start when none of them are the profile's own
    (no items at all, or only the workspace's popular items: the profile is newer than
    the objects' last training)."""

    items: list[Recommendation]
    profile: HotProfile
    cold_start: bool


def _not_found(identifier: Identifier) -> NotFound:
    return NotFound(f"no profile with this {identifier.type} in this workspace")


def encode_page_token(event: TimelineEvent) -> str:
    """An opaque token resuming after `event` in (timestamp desc, seq desc) order."""
    return base64.urlsafe_b64encode(f"{event.timestamp_us}:{event.seq}".encode()).decode()


def decode_page_token(token: str, field_name: str = "page_token") -> tuple[int, int] | None:
    """The (timestamp_us, seq) a token resumes after; None for ''; InvalidArgument if bad."""
    if not token:
        return None
    try:
        timestamp, seq = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return int(timestamp), int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            f"{field_name}: not a token this service issued",
            [FieldViolation(field_name, "not a token this service issued")],
        ) from None


class ProfileService:
    """The Profile API's operations for one process."""

    def __init__(
        self,
        hot: HotState,
        records: Records,
        clock: Clock,
        exposures: ExposureLog | None = None,
    ) -> None:
        self._hot = hot
        self._records = records
        self._clock = clock
        self._exposures = exposures
        self._request_audiences = RequestAudienceCache(hot.audience_config)

    async def get_profile(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> HotProfile:
        """The profile an identifier belongs to, from the hot state; NotFound if none."""
        profile = (await self._read(workspace_id, [identifier], query))[0]
        if profile is None:
            raise _not_found(identifier)
        return _without_consumed(profile)

    async def get_profile_encoded(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> bytes:
        """get_profile's answer as the serialized audiences.v1.Profile (GetProfile's path).

        The hot state writes the message itself (services.profile.hotread), consumed
        recommendations left out like get_profile does, so the hottest call builds
        no object per section; NotFound if the identifier is unknown.
        """
        encoded = await self._hot.read_encoded(workspace_id, identifier, query)
        if encoded is None:
            raise _not_found(identifier)
        return encoded

    def request_context(
        self, fields: Mapping[str, Any], custom: Any, at_us: int | None, field_prefix: str
    ) -> dict[str, Any]:
        """A request's context (services.shared.request_context), dated `at_us` or now;
        INVALID_ARGUMENT with a field violation per bad attribute."""
        now_us = self._clock.now_us() if at_us is None else at_us
        context, problems = build_context(fields, custom, now_us, field_prefix)
        if problems:
            raise InvalidArgument(
                "; ".join(f"{f}: {r}" for f, r in problems[:5]),
                [FieldViolation(f, r) for f, r in problems],
            )
        return context

    async def get_profile_in_context(
        self,
        workspace_id: str,
        identifier: Identifier,
        query: ProfileQuery,
        context: Mapping[str, Any] | None,
        log_exposure: bool = False,
    ) -> bytes:
        """get_profile_encoded's message plus the context audiences the request
        qualifies for (Profile.context_audiences), still one Redis round trip: the
        definitions are compiled per published version (services.profile.context_audiences)."""
        found = await self._hot.read_for_context(workspace_id, identifier, query)
        if found is None:
            raise _not_found(identifier)
        encoded, profile_id, stored, version = found
        settings = await self._request_audiences.get(workspace_id, version)
        qualified = (
            [] if context is None else context_audiences(settings, context, profile_id, stored)
        )
        if log_exposure and self._exposures is not None:
            shown = [k for k in stored if k in settings.measured]
            shown += [k for k, _ in qualified if k in settings.measured]
            if shown:
                self._exposures.record(workspace_id, shown, profile_id, self._clock.now_us())
        return encoded + encode_context_audiences(qualified)

    async def context_audiences(
        self, workspace_id: str, identifier: Identifier, context: Mapping[str, Any]
    ) -> tuple[HotProfile, list[tuple[str, bool]]]:
        """The profile's stored audiences and the context audiences (key, holdout) the
        request qualifies for, in one round trip (the HTTP view's path)."""
        query = ProfileQuery(frozenset({Section.AUDIENCES}))
        found, version = await self._hot.read_with_version(workspace_id, [identifier], query)
        profile = found[0]
        if profile is None:
            raise _not_found(identifier)
        settings = await self._request_audiences.get(workspace_id, version)
        holdouts = settings.holdouts
        profile.holdouts = frozenset(
            k
            for k in profile.audiences
            if k in holdouts and in_holdout(k, profile.profile_id, holdouts[k])
        )
        return profile, context_audiences(
            settings, context, profile.profile_id, list(profile.audiences)
        )

    async def batch_get_profiles(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> list[HotProfile | None]:
        """Profiles in request order, None where an identifier is unknown (one round trip)."""
        found = await self._read(workspace_id, identifiers, query)
        return [None if p is None else _without_consumed(p) for p in found]

    async def _read(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> list[HotProfile | None]:
        """The hot read; with the audiences section, also their holdout flags (the
        shares' version comes in the same round trip), as GetProfile's script sets them."""
        if Section.AUDIENCES not in query.sections:
            return await self._hot.read(workspace_id, identifiers, query)
        found, version = await self._hot.read_with_version(workspace_id, identifiers, query)
        holdouts = (await self._request_audiences.get(workspace_id, version)).holdouts
        if holdouts:
            for profile in found:
                if profile is not None:
                    profile.holdouts = frozenset(
                        k
                        for k in profile.audiences
                        if k in holdouts and in_holdout(k, profile.profile_id, holdouts[k])
                    )
        return found

    async def list_events(
        self,
        workspace_id: str,
        identifier: Identifier,
        page_size: int,
        page_token: str,
        names: Sequence[str],
    ) -> EventPage:
        """One page of the profile's timeline, newest first (reads Postgres)."""
        before = decode_page_token(page_token)
        survivor = await self._records.resolve(workspace_id, identifier)
        if survivor is None:
            raise _not_found(identifier)
        # One extra row says whether another page exists without a COUNT.
        rows = await self._records.list_events(workspace_id, survivor, names, page_size + 1, before)
        page = rows[:page_size]
        token = encode_page_token(page[-1]) if len(rows) > page_size else ""
        return EventPage(page, token)

    async def get_recommendations(
        self,
        workspace_id: str,
        identifier: Identifier,
        limit: int,
        include_consumed: bool,
        model_key: str = "",
    ) -> Recommendations:
        """The profile's top `limit` items, best first, from the hot state; only those of
        recommendation object `model_key` when one is named."""
        query = ProfileQuery(frozenset({Section.RECOMMENDATIONS, Section.IDENTIFIERS}))
        profile = (await self._hot.read(workspace_id, [identifier], query))[0]
        if profile is None:
            raise _not_found(identifier)
        items = profile.recommendations
        if items is not None and model_key:
            items = [item for item in items if item.model_key == model_key] or None
        if items is None:
            return Recommendations([], profile, cold_start=True)
        chosen = items if include_consumed else [i for i in items if not i.consumed]
        chosen = sorted(chosen, key=lambda item: item.score, reverse=True)[:limit]
        popular = profile.popular_models
        cold = all(item.model_key in popular for item in items)
        return Recommendations(chosen, profile, cold_start=cold)

    async def delete_profile(self, workspace_id: str, identifier: Identifier) -> Deletion:
        """Erase the profile everywhere and suppress its identifiers.

        Postgres goes first (in one transaction, with the suppressions, so ingest stops
        accepting the identifiers at the same instant); the person's entries leave the
        event stream before that transaction commits (if that fails, nothing was
        erased and a retry starts over), the hot state after it. If the hot state
        could not be erased, calling again finishes the job: the identifier is gone
        from Postgres but still resolves in Redis, and that alone is erased.
        """
        survivor = await self._records.resolve(workspace_id, identifier)
        hot = await self._hot.resolve(workspace_id, identifier)
        if survivor is None:
            if hot is None:
                raise _not_found(identifier)
            await self._hot.erase(workspace_id, [hot.profile_id])
            await self._hot.erase_identities(workspace_id, [(identifier.type, identifier.value)])
            return Deletion(0, 0, 0)
        async with self._records.erasing(workspace_id, survivor, self._clock.now_us()) as erased:
            await self._hot.erase_stream_entries(erased.event_seqs)
        hot_ids: list[int | str] = list(erased.profile_ids)
        if hot is not None and hot.profile_id not in {str(m) for m in erased.profile_ids}:
            hot_ids.append(hot.profile_id)
        await self._hot.erase(workspace_id, hot_ids)
        await self._hot.erase_identities(workspace_id, erased.identifiers)
        return Deletion(len(erased.event_seqs), len(erased.identifiers), erased.audiences_exited)


def _without_consumed(profile: HotProfile) -> HotProfile:
    # A profile view shows what to recommend next; consumed items only on request.
    if profile.recommendations and any(r.consumed for r in profile.recommendations):
        profile.recommendations = [r for r in profile.recommendations if not r.consumed]
    return profile
